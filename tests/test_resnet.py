"ResNet-18 scale: 32x32 data, the resumable native ResNet zoo, function-preserving alignment, bounded memory"
import math

import numpy as np
import pytest
import torch
from torch import nn

from sane_nb import zoo as zoo_module
from sane_nb.resnet import resnet_data, memory_profile, resnet_config, peak_memory_mb, RESNET_POINT
from sane_nb.nets import accuracy
from sane_nb.data import write_idx
from sane_nb.zoo import load_zoo, make_zoo
from sane_nb.nets import make_net
from sane_nb.model import SANE, SaneConfig
from sane_nb.align import permutation_spec, random_permutation, weight_matching, apply_permutation

torch.set_num_threads(1)
SMALL = dict(dataset="digits", n_models=2, epochs=2, kind="seed", arch="resnet18", grid=RESNET_POINT, train_images=10,
             test_images=8, image_size=32, batch_size=4, progress=False)


def test_digits_upsampled_and_idx_padded(tmp_path):
    d = resnet_data("digits", n_train=10, n_test=5)
    assert d.x_train.shape == (10, 1, 32, 32) and d.x_test.shape == (5, 1, 32, 32)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(rng.integers(1, 255, (n, 28, 28)), tmp_path/f"{split}-images-idx3-ubyte.gz")
        write_idx(np.arange(n) % 10, tmp_path/f"{split}-labels-idx1-ubyte.gz")
    f = resnet_data("fashion_mnist", folder=tmp_path)
    assert f.x_train.shape == (20, 1, 32, 32)
    bg = -f.mean/f.std
    assert torch.allclose(f.x_train[:, :, :2], torch.tensor(bg)) and torch.allclose(f.x_train[:, :, :, -2:], torch.tensor(bg))
    assert (f.x_train[:, :, 2:30, 2:30] > bg).all()  # every real pixel is > 0 here
    with pytest.raises(ValueError, match="28x28 images to 16x16"): resnet_data("fashion_mnist", size=16, folder=tmp_path)


def test_the_old_maker_is_a_deprecated_call_of_make_zoo(tmp_path):
    from sane_nb.resnet import make_resnet_zoo
    with pytest.warns(DeprecationWarning, match="make_zoo"):
        old = make_resnet_zoo(tmp_path/"old", n_models=2, epochs=2, n_train=10, n_test=8, batch_size=4, progress=False, device="cpu")
    new = make_zoo(tmp_path/"new", **SMALL)
    assert all(torch.equal(old[i][0][k], new[i][0][k]) for i in range(len(new)) for k in new[i][0])


def test_zoo_is_native_and_epoch0_is_the_init(tmp_path):
    zoo = make_zoo(tmp_path/"z", **SMALL)
    assert len(zoo) == 6 and zoo.epochs == [0, 1, 2] and zoo.format == "native"
    assert not (tmp_path/"z"/"partial").exists()
    sd, p = zoo[3]
    assert p["epoch"] == 0 and p["act"] == "relu"
    init = make_net("resnet18", in_ch=1, n_classes=10, init="kaiming_uniform", seed=p["seed"]).state_dict()
    assert list(sd) == list(init) and all(torch.equal(sd[k], init[k]) for k in init)
    net = zoo.make_model(5)
    data = resnet_data("digits", n_train=10, n_test=8)   # the zoo's images
    loss, acc = accuracy(net, data.x_test, data.y_test, with_loss=True)
    assert math.isclose(acc, zoo.props["test_acc"][5], abs_tol=1e-6) and math.isclose(loss, zoo.props["test_loss"][5], rel_tol=1e-4)
    assert int(zoo[5][0]["bn1.num_batches_tracked"]) == 3*2  # 10 images in batches of 4, two epochs
    with pytest.raises(ValueError, match="epochs"): make_zoo(tmp_path/"z", **{**SMALL, "epochs": 3})


def test_interrupted_zoo_resumes_to_the_same_weights(tmp_path, monkeypatch):
    full = make_zoo(tmp_path/"full", **SMALL)
    orig = zoo_module.train_one
    class Crash(Exception): pass
    def crash_at(ep):
        if ep == 1: raise Crash()
    def crashing(cfg, *a, on_epoch=None, **kw):
        return orig(cfg, *a, on_epoch=crash_at if cfg["seed"] == full.props["seed"][-1] else on_epoch, **kw)
    monkeypatch.setattr(zoo_module, "train_one", crashing)
    with pytest.raises(Crash): make_zoo(tmp_path/"cut", **SMALL)
    part = tmp_path/"cut"/"partial"/"00001"
    assert (part/"epoch_0001.safetensors").exists() and not (part/"epoch_0002.safetensors").exists()
    monkeypatch.setattr(zoo_module, "train_one", orig)
    with pytest.warns(UserWarning, match="unfinished"): assert len(load_zoo(tmp_path/"cut")) == 3
    cut = make_zoo(tmp_path/"cut", **SMALL)
    assert not (tmp_path/"cut"/"partial").exists()
    for i in range(len(full)):
        a, b = full[i][0], cut[i][0]
        assert all(torch.equal(a[k], b[k]) for k in a), i
    np.testing.assert_array_equal(full.props["test_acc"], cut.props["test_acc"])


def _realistic_resnet(seed):
    "A ResNet-18 with non-trivial BatchNorm parameters and running statistics"
    torch.manual_seed(seed)
    net = make_net("resnet18", in_ch=3, n_classes=10)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(.5, 1.5); m.bias.data.normal_(0, .1)
            m.running_mean.normal_(0, .1); m.running_var.uniform_(.5, 2)
    return net.eval()


def test_permuted_and_matched_resnets_compute_the_same_logits():
    a, b = _realistic_resnet(1), _realistic_resnet(2)
    x = torch.randn(4, 3, 32, 32)
    spec = permutation_spec(a)
    assert len(spec.perm_to_axes) == 12
    def logits(sd):
        n = make_net("resnet18", in_ch=3, n_classes=10); n.load_state_dict(sd)
        with torch.no_grad(): return n.eval()(x)
    ref = logits(b.state_dict())
    perm_b, perm = random_permutation(b.state_dict(), spec, torch.Generator().manual_seed(0), return_perm=True)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    torch.testing.assert_close(logits(perm_b), ref, atol=1e-5, rtol=1e-5)
    matched = apply_permutation(spec, weight_matching(spec, a.state_dict(), perm_b), perm_b)
    torch.testing.assert_close(logits(matched), ref, atol=1e-5, rtol=1e-5)
    # matching the permuted copy back to the original recovers it exactly
    back = apply_permutation(spec, weight_matching(spec, b.state_dict(), perm_b), perm_b)
    assert all(torch.equal(back[k], v) for k, v in b.state_dict().items())


def test_memory_of_tokenize_embed_decode_does_not_grow_with_tokens():
    torch.manual_seed(0)
    sane = SANE(resnet_config()).eval()
    rows = memory_profile(sane, _realistic_resnet(0).state_dict(), stops=("layer3", None), halo=64, batch_size=16)
    assert [r["n_tokens"] for r in rows] == [5376, 53524]
    small, big = rows
    assert big["tokenize_held_mb"] > 9*small["tokenize_held_mb"]
    if math.isnan(big["decode_mb"]): pytest.skip("peak resident memory is not measurable on this platform")
    for k in ("tokenize", "embed", "decode"):
        assert big[f"{k}_extra_mb"] < small[f"{k}_extra_mb"] + 16, (k, rows)  # a whole haloed copy would add > 100 MB
        assert big[f"{k}_mb"] < big[f"{k}_held_mb"] + 40, (k, rows)


def test_peak_memory_counts_what_a_call_touches():
    _, mb = peak_memory_mb(lambda: torch.ones(32, 2**20).sum())
    if math.isnan(mb): pytest.skip("peak resident memory is not measurable on this platform")
    assert 120 < mb < 180


def test_resnet_configs():
    tiny, paper = resnet_config(), resnet_config("paper")
    assert (tiny.tokensize, tiny.windowsize, tiny.max_positions) == (288, 256, [55000, 100, 550])
    assert tiny.d_model == SaneConfig.tiny().d_model
    assert paper == SaneConfig.paper_resnet18()
    with pytest.raises(ValueError, match="preset"): resnet_config("huge")


def test_zoos_of_the_old_resnet_maker_keep_their_images():
    "A ResNet zoo written by make_resnet_zoo before it called make_zoo names its images by n_train / n_test / size"
    from sane_nb.zoo import zoo_images
    old = dict(trainer="sane_nb.resnet", dataset="digits", data_folder=None, n_train=10, n_test=8, size=32, seed=0)
    d = zoo_images(old)
    assert d.x_train.shape == (10, 1, 32, 32) and d.x_test.shape == (8, 1, 32, 32)
