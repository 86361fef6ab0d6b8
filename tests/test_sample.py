"Tests of stage 6: sampling (sane_nb.sample) and evaluation of sampled models (sane_nb.evaluate)"
import numpy as np
import pytest
import torch
from torch import nn

from sane_nb.nets import make_net
from sane_nb.align import random_permutation
from sane_nb.tokenize import LayerStats
from sane_nb.model import SaneConfig, SANE
from sane_nb.sample import (prompt_tokens, decode_tokens, kde_sample, tokens_to_state_dicts, condition_bn,
                            sample_models, select_best, weight_vector, relative_error, reconstruct, accuracy)
from sane_nb.evaluate import (holdout, finetune, noise_baseline, noise_candidates, novelty_audit, class_subset, transpose_images,
                              summarize, compare_inits)
from sane_nb.data import ImageData

torch.set_num_threads(1)


def _nets(n, arch="cnn_digits", seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(make_net(arch, in_ch=1, n_classes=10).state_dict())
    return out


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    x[torch.arange(n), 0, y % 8, y // 8 % 8] += 4.  # learnable signal
    return ImageData("synthetic", x[:150], y[:150], x[150:], y[150:], 0., 1.)


def _sane(tokensize, n_tokens, windowsize=None, n_layers=1):
    cfg = SaneConfig(tokensize=tokensize, d_model=16, n_heads=2, n_layers=n_layers, lat_dim=4,
                     windowsize=windowsize or n_tokens, max_positions=[n_tokens, 8, 32], proj_pool="mean")
    torch.manual_seed(0)
    return SANE(cfg).eval()


@pytest.fixture(scope="module")
def zoo():
    sds = _nets(4)
    return sds, LayerStats.from_state_dicts(sds)


def test_kde_published_mode_repeats_anchor_and_noise():
    z = torch.randn(3, 7, 4)
    zs, a = kde_sample(z, 6, bandwidth=0.2, mode="published", seed=1)
    assert (a == a[:, :1]).all()
    d = zs - z[a[:, 0]]
    torch.testing.assert_close(d, d[:, :1].expand_as(d))


def test_kde_token_mode_is_independent_per_token():
    z = torch.randn(3, 50, 4)
    zs, a = kde_sample(z, 4, bandwidth=0.2, mode="token", seed=1)
    assert (a != a[:, :1]).any(1).all()                # every sample mixes prompts
    d = zs - z[a, torch.arange(50)]
    assert (d[:, 1:] - d[:, :1]).abs().max() > 0.1     # noise differs between tokens
    assert abs(d.std().item() - 0.2) < 0.03            # with the bandwidth as std
    zs2, _ = kde_sample(z, 4, mode="token", seed=1)
    torch.testing.assert_close(zs, zs2)                # seeded


def test_kde_joint_mode_one_anchor_independent_noise():
    z = torch.randn(3, 40, 4)
    zs, a = kde_sample(z, 5, bandwidth=0.5, mode="joint", seed=2)
    assert (a == a[:, :1]).all()
    d = zs - z[a[:, 0]]
    assert (d[:, 1:] - d[:, :1]).abs().max() > 0.1
    assert abs(d.std().item() - 0.5) < 0.05


def test_kde_relative_bandwidth_scales_with_latents():
    z = 0.01*torch.randn(3, 40, 4)
    zs, a = kde_sample(z, 5, bandwidth=1., mode="joint", relative=True)
    assert abs((zs - z[a[:, 0]]).std().item()/z.std().item() - 1) < 0.15


def test_kde_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"): kde_sample(torch.randn(2, 3, 4), 2, mode="individual")


def test_tokens_round_trip_exact(zoo):
    sds, stats = zoo
    toks, mask, pos = prompt_tokens(sds, stats, 16)
    back = tokens_to_state_dicts(toks, mask, pos, stats, sds[0])
    for a, b in zip(back, sds):
        for k in a: torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    assert relative_error(back, sds).max() < 1e-5


def test_haloed_decode_equals_full_decode_for_tokenwise_decoder(zoo):
    sds, stats = zoo
    toks, mask, pos = prompt_tokens(sds, stats, 16)
    N = toks.shape[1]
    full = _sane(16, N, N, n_layers=0)     # no attention: each token decodes alone, so windows cannot change it
    win = _sane(16, N, 10, n_layers=0)
    win.load_state_dict(full.state_dict())
    z = torch.randn(2, N, 4)
    torch.testing.assert_close(decode_tokens(win, z, pos, halo=2, batch_size=3), decode_tokens(full, z, pos))


def test_decode_rejects_wrong_positions(zoo):
    sds, stats = zoo
    toks, mask, pos = prompt_tokens(sds, stats, 16)
    sane = _sane(16, toks.shape[1])
    with pytest.raises(ValueError, match="positions"): decode_tokens(sane, torch.randn(1, 5, 4), pos)


def test_condition_bn_estimates_data_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(108, 10))
    with torch.no_grad(): net[1].running_var.fill_(-1.)
    x = torch.randn(64, 1, 8, 8)*3 + 1
    condition_bn(net, x, iters=40, bs=64)
    with torch.no_grad(): h = net[0](x)
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), atol=2e-2, rtol=2e-2)  # batches drawn with replacement
    torch.testing.assert_close(net[1].running_var, h.var((0, 2, 3)), atol=5e-2, rtol=5e-2)
    assert not net.training and net[1].momentum == 0.1


def test_condition_bn_is_noop_without_bn(zoo):
    sds, _ = zoo
    net = make_net("cnn_digits"); net.load_state_dict(sds[0])
    condition_bn(net, torch.randn(10, 1, 8, 8))
    assert all(torch.equal(v, sds[0][k]) for k, v in net.state_dict().items())


def test_sample_models_subsamples_best(zoo):
    sds, stats = zoo
    N = prompt_tokens(sds[:1], stats, 16)[0].shape[1]
    sane, data = _sane(16, N), _data()
    s = sample_models(sane, sds, 3, stats, lambda: make_net("cnn_digits"), val=(data.x_test, data.y_test), k=7)
    assert len(s) == 3 and s.latents.shape == (3, N, 4) and s.anchors.shape == (3, N)
    assert (s.val_acc[:-1] >= s.val_acc[1:]).all()
    net = make_net("cnn_digits"); net.load_state_dict(s.state_dicts[0])
    assert abs(accuracy(net, data.x_test, data.y_test) - s.val_acc[0].item()) < 1e-6


def _bn_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def test_sample_models_batchnorm_needs_images_and_is_conditioned():
    sds = []
    for i in range(3): torch.manual_seed(i); sds.append(_bn_net().state_dict())
    stats = LayerStats.from_state_dicts(sds)
    N = prompt_tokens(sds[:1], stats, 16)[0].shape[1]
    sane = _sane(16, N)
    with pytest.raises(ValueError, match="BatchNorm"): sample_models(sane, sds, 1, stats, _bn_net)
    x = _data().x_train
    s = sample_models(sane, sds, 2, stats, _bn_net, bn_x=x, bn_iters=5)
    net = _bn_net(); net.load_state_dict(s.state_dicts[0])
    with torch.no_grad(): h = net[0](x)
    assert (net[1].running_var > 0).all()
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), atol=0.1, rtol=0.1)


def test_noise_baseline_matches_distances(zoo):
    sds, _ = zoo
    samples = [{k: v + 0.05*torch.randn_like(v) for k, v in sds[1].items()}]
    noisy, d = noise_baseline(sds, samples)
    P = torch.stack([weight_vector(p) for p in sds])
    torch.testing.assert_close((P - weight_vector(noisy[0])).norm(dim=1)[1], d[0], atol=1e-4, rtol=1e-4)
    assert not torch.equal(weight_vector(noisy[0]), weight_vector(samples[0]))


def test_noise_candidates_per_layer_and_distances(zoo):
    "Both noise variants hit the requested distances; the per-layer one moves each layer in proportion to its std"
    sds, stats = zoo
    d, j = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0, 1, 0])
    for st in (None, stats):
        out = noise_candidates(sds, d, j, seed=1, stats=st)
        got = torch.stack([(weight_vector(o) - weight_vector(sds[i])).norm() for o, i in zip(out, j.tolist())])
        torch.testing.assert_close(got, d, atol=1e-4, rtol=1e-4)
    out = noise_candidates(sds, torch.tensor([50.]), torch.tensor([0]), seed=1, stats=stats)[0]
    ratio = {k: (out[k] - sds[0][k]).std().item()/s for k, (_, s) in stats.stats.items()}
    assert max(ratio.values())/min(ratio.values()) < 2, ratio
    raw = noise_candidates(sds, torch.tensor([50.]), torch.tensor([0]), seed=1)[0]
    step = {k: (raw[k] - sds[0][k]).std().item() for k in stats.stats}
    assert max(step.values())/min(step.values()) < 1.5          # isotropic: the same step in every layer


def test_select_best_keeps_the_most_accurate(zoo):
    sds, _ = zoo
    data = _data()
    mk = lambda: make_net("cnn_digits")
    val = (data.x_test, data.y_test)
    accs = torch.tensor([accuracy(_load(mk, sd), *val) for sd in sds])
    kept, va, keep = select_best(sds, 2, mk, val)
    assert keep.tolist() == accs.argsort(descending=True)[:2].tolist()
    torch.testing.assert_close(va, accs.sort(descending=True).values[:2])
    assert select_best(sds, 2, mk)[2].tolist() == [0, 1]    # no validation data: the first n


def _load(mk, sd):
    net = mk(); net.load_state_dict(sd); return net


def test_novelty_audit_sees_through_permutations(zoo):
    sds, _ = zoo
    data = _data()
    mk = lambda: make_net("cnn_digits")
    copy = random_permutation(sds[2], generator=torch.Generator().manual_seed(3))
    assert (weight_vector(copy) - weight_vector(sds[2])).norm() > 1.
    noisy, _ = noise_baseline(sds, [copy])
    out = novelty_audit([copy], noisy, sds, mk, data.x_test, data.y_test, zoo_ids=[0, 1, 2, 3])
    assert out["sane"]["l2"] < 1e-4 and out["sane"]["iou"] == pytest.approx(1.)
    assert out["zoo"]["l2"] > 1.


def test_holdout_finetune_and_subset():
    data = _data()
    tr, (xv, yv) = holdout(data, 0.2, seed=1)
    assert len(tr.x_train) + len(xv) == len(data.x_train)
    tr2, (xv2, _) = holdout(data, 0.2, seed=1)
    assert torch.equal(xv, xv2)
    torch.manual_seed(0)
    curve = finetune(make_net("cnn_digits"), tr, epochs=3, lr=1e-2)
    assert len(curve) == 4 and curve[-1] > curve[0]
    sub = class_subset(data, [3, 1])
    assert set(sub.y_train.tolist()) <= {0, 1} and len(sub.x_train) == int(torch.isin(data.y_train, torch.tensor([3, 1])).sum())
    with pytest.raises(ValueError, match="frac"): holdout(data, 1.5)


def test_compare_inits_and_summary(zoo):
    sds, stats = zoo
    N = prompt_tokens(sds[:1], stats, 16)[0].shape[1]
    res = compare_inits(_sane(16, N), sds, stats, lambda: make_net("cnn_digits"), _data(), n=2, epochs=1, populations=2)
    assert res["sane"].shape == (2, 2, 2) and res["dist"].shape == (2, 2)
    sm = summarize(res, (0, 1, 5))
    assert set(sm) == {"sane", "scratch", "prompts", "noise", "noise_layer"} and set(sm["sane"]) == {"0", "0_std", "1", "1_std"}


def test_reconstruct_shapes(zoo):
    sds, stats = zoo
    N = prompt_tokens(sds[:1], stats, 16)[0].shape[1]
    rec = reconstruct(_sane(16, N, 20), sds[:2], stats, halo=4)
    assert [set(r) for r in rec] == [set(sds[0])]*2
    assert relative_error(rec, sds[:2]).shape == (2,)


def test_transpose_images_keeps_labels():
    data = _data()
    t = transpose_images(data)
    assert torch.equal(t.x_train[3, 0], data.x_train[3, 0].T) and torch.equal(t.y_test, data.y_test)


def test_checkpoint_token_zoo_round_trip(tmp_path, zoo):
    "The sampling autoencoder's training tokens: standardised with the given statistics, reversible, with properties"
    from sane_nb.sample import checkpoint_token_zoo
    sds, stats = zoo
    tz = checkpoint_token_zoo(sds, stats, 73, tmp_path/"t", [{"test_acc": 0.1*i} for i in range(len(sds))])
    assert tz.tokens.shape[:2] == (len(sds), 48) and tz.stats == stats
    assert np.allclose(tz.props["test_acc"], [0.1*i for i in range(len(sds))])
    back = tz.state_dict(1)
    assert all(torch.allclose(back[k], sds[1][k], atol=1e-5) for k in sds[1])
    assert list(tz.splits) == ["train"]
    held = checkpoint_token_zoo(sds, stats, 73, tmp_path/"h", n_train=len(sds) - 1)   # the last model held out
    assert held.splits["train"].tolist() == list(range(len(sds) - 1)) and held.splits["val"].tolist() == [len(sds) - 1]
    with pytest.raises(ValueError, match="n_train=0"): checkpoint_token_zoo(sds, stats, 73, tmp_path/"z", n_train=0)
