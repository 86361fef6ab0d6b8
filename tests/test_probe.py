"Tests of sane_nb.probe and sane_nb.analysis: haloed windows, embedding, baselines, probes, spectral features"
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from sane_nb.model import SANE, SaneConfig
from sane_nb.tokenize import tokenize
from sane_nb.probe import (halo_windows, encode_windows, embed, encode_tokens, check_positions, weight_stats,
                           flat_weights, ridge_fit, r2_score, kendall_tau, fit_probe, predict_properties, stacked_probes, ProbeTable)
from sane_nb.analysis import powerlaw_alpha, spectral_features, spectral_array, pca_2d

torch.set_num_threads(1)


# ---------------------------------------------------------------- halo_windows
@pytest.mark.parametrize("w", range(1, 26))
def test_halo_windows_exhaustive(w):
    for h in range((w + 1)//2):
        for n in range(1, 130):
            plan = halo_windows(n, w, h)
            kept = [k for p in plan for k in range(p[2], p[3])]
            assert kept == list(range(n)), (n, w, h)
            for s, e, ks, ke in plan:
                assert 0 <= s <= ks < ke <= e <= n
                assert e - s == min(w, n)
                assert ks - s >= min(h, ks) and e - ke >= min(h, n - ke), (n, w, h, plan)
            if n > w: assert len(plan) <= -(-max(n - (w - h), 0)//(w - 2*h)) + 1


def test_halo_windows_errors():
    for args, msg in [((0, 4, 0), "n_tokens"), ((5, 0, 0), "windowsize"), ((5, 4, 2), "2*halo"), ((5, 4, -1), "2*halo")]:
        with pytest.raises(ValueError, match=msg.replace("*", r"\*")): halo_windows(*args)


# ---------------------------------------------------------------- embedding
class IndexEncoder(nn.Module):
    def __init__(self, windowsize=8, tokensize=4, max_positions=(60000, 8, 4000)):
        super().__init__()
        self.cfg = SimpleNamespace(windowsize=windowsize, tokensize=tokensize, max_positions=list(max_positions))
        self.w, self.largest = nn.Parameter(torch.zeros(1)), 0
    def encode(self, x, pos):
        self.largest = max(self.largest, x.shape[0]*x.shape[1])
        return torch.cat([pos[..., :2].float(), x[..., :1]], -1) + 0*self.w


def _seq(n_models, N, T=4, layers=3):
    pos = torch.stack([torch.arange(N), torch.arange(N)*layers//N, torch.arange(N) % 5], 1)
    return torch.randn(n_models, N, T), pos


def test_encode_tokens_is_exact_per_token():
    tok, pos = _seq(3, 37)
    z = encode_tokens(IndexEncoder(), tok, pos, halo=2, batch_size=7)
    assert torch.equal(z[..., 0], torch.arange(37.).expand(3, -1))
    assert torch.equal(z[..., 2], tok[..., 0])


def test_embed_means_and_layers():
    tok, pos = _seq(2, 30)
    e = embed(IndexEncoder(), tok, pos, halo=1, batch_size=3)
    torch.testing.assert_close(e.model[:, 2], tok[..., 0].mean(1))
    for l in range(3):
        torch.testing.assert_close(e.layers[:, l, 2], tok[:, pos[:, 1] == l, 0].mean(1))
    assert embed(IndexEncoder(), tok, pos, per_layer=False).layers is None


def test_memory_is_bounded_by_the_batch_for_resnet_length():
    tok, pos = _seq(1, 53_524)
    enc = IndexEncoder()
    e = embed(enc, tok, pos, halo=2, batch_size=128)
    assert enc.largest <= 128*8
    torch.testing.assert_close(e.model[0, 0], torch.tensor(53_523/2))


def test_list_input_and_per_model_positions_equal_tensor_input():
    tok, pos = _seq(3, 25)
    a = embed(IndexEncoder(), tok, pos, halo=2)
    b = embed(IndexEncoder(), list(tok), pos.expand(3, -1, -1).clone(), halo=2)
    torch.testing.assert_close(a.model, b.model); torch.testing.assert_close(a.layers, b.layers)


@pytest.fixture(scope="module")
def tiny_sane():
    torch.manual_seed(0)
    cfg = SaneConfig(tokensize=16, d_model=32, n_heads=2, n_layers=1, lat_dim=8, windowsize=8, max_positions=[64, 4, 16])
    return SANE(cfg)


def test_real_sane_batching_invariant_and_mode_restored(tiny_sane):
    tok, pos = torch.randn(3, 50, 16), torch.stack([torch.arange(50), torch.arange(50)//20, torch.arange(50) % 10], 1)
    tiny_sane.train()
    a, b = embed(tiny_sane, tok, pos, halo=2, batch_size=1), embed(tiny_sane, tok, pos, halo=2, batch_size=64)
    torch.testing.assert_close(a.model, b.model, atol=1e-5, rtol=1e-5)
    assert tiny_sane.training
    short = tok[:, :8]
    torch.testing.assert_close(encode_tokens(tiny_sane, short, pos[:8]), tiny_sane.eval().encode(short, pos[:8].expand(3, -1, -1)))


def test_bad_positions_and_other_architectures(tiny_sane):
    ok = nn.Sequential(nn.Linear(15, 10), nn.Tanh(), nn.Linear(10, 4))
    tok, _, pos = tokenize(ok.state_dict(), tokensize=16)
    assert embed(tiny_sane, tok, pos).model.shape == (1, 8)
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])
    tok, _, pos = tokenize(deep.state_dict(), tokensize=16)
    with pytest.raises(ValueError, match="layer index reaches 4"): embed(tiny_sane, tok, pos)
    wide = nn.Sequential(nn.Linear(4, 20))
    tok, _, pos = tokenize(wide.state_dict(), tokensize=16)
    with pytest.raises(ValueError, match="row index reaches 19"): embed(tiny_sane, tok, pos)
    with pytest.raises(ValueError, match="tokensize=16"): embed(tiny_sane, torch.randn(1, 8, 5), pos[:8])
    with pytest.raises(ValueError, match=r"shape \[..., 3\]"): check_positions(tiny_sane, pos[:, :2])
    with pytest.raises(ValueError, match="no models"): embed(tiny_sane, torch.randn(0, 8, 16), pos[:8])


# ---------------------------------------------------------------- baselines
def test_weight_stats_ignore_padding():
    net = nn.Sequential(nn.Linear(20, 6), nn.Tanh(), nn.Linear(6, 3))
    tok, mask, pos = tokenize(net.state_dict(), tokensize=8)
    noisy = tok.clone(); noisy[~mask] = 1e3
    a, b = weight_stats(tok[None], mask, pos), weight_stats(noisy[None], mask, pos)
    torch.testing.assert_close(a, b)
    w0 = torch.cat([net[0].weight.flatten(), net[0].bias]).double()
    q = torch.quantile(w0, torch.tensor([.01, .25, .5, .75, .99], dtype=torch.float64))
    torch.testing.assert_close(a[0, :7].double(), torch.cat([w0.mean()[None], w0.var(correction=0)[None], q]), atol=1e-6, rtol=1e-5)
    assert flat_weights(tok[None], mask).shape == (1, sum(p.numel() for p in net.parameters()))
    with pytest.raises(ValueError, match="matching mask"): weight_stats(tok, mask, pos)


# ---------------------------------------------------------------- probes
def test_ridge_matches_sklearn():
    from sklearn.linear_model import Ridge
    rng = np.random.default_rng(1)
    for n, d in [(40, 5), (15, 60)]:
        X, y = rng.normal(size=(n, d)), rng.normal(size=n)
        w, b = ridge_fit(X, y, 3.0)
        m = Ridge(alpha=3.0).fit(X, y)
        np.testing.assert_allclose(w, m.coef_, atol=1e-8); np.testing.assert_allclose(b, m.intercept_, atol=1e-8)


def test_metrics():
    assert r2_score([1, 2, 3], [1, 2, 3]) == 1.0 and np.isnan(r2_score([1, 1], [1, 1]))
    assert abs(kendall_tau([1, 2, 3], [3, 2, 1]) + 1) < 1e-12 and np.isnan(kendall_tau([1, 2], [0, 0]))
    with pytest.raises(ValueError, match="probe family"): fit_probe("cubic", False, np.ones((3, 1)), np.arange(3.), np.ones((1, 1)), np.ones(1))


def _toy_zoo(n_models=30, epochs=4, seed=0):
    rng = np.random.default_rng(seed)
    props, X = [], []
    for m in range(n_models):
        lr, act = rng.choice([1e-3, 1e-2]), rng.choice(["relu", "tanh"])
        for e in range(epochs):
            acc = 0.1 + 0.8*(1 - np.exp(-e*lr*300))
            props.append(dict(model_id=m, epoch=e, test_acc=acc, ggap=0.01*e, act=str(act), optimizer="adam"))
            X.append([acc + 0.01*rng.normal(), e + 0.1*rng.normal(), float(act == "relu") + 0.1*rng.normal(), rng.normal()])
    mid = np.array([p["model_id"] for p in props])
    split = {"train": np.flatnonzero(mid < 20), "val": np.flatnonzero((mid >= 20) & (mid < 25)), "test": np.flatnonzero(mid >= 25)}
    return np.array(X), props, split


def test_predict_properties(tmp_path):
    X, props, split = _toy_zoo()
    t = predict_properties({"good": X, "noise": np.random.default_rng(0).normal(size=X.shape)}, props, split, out=tmp_path/"p.json")
    assert isinstance(t, ProbeTable) and "| representation |" in t._repr_markdown_()
    nest = t.nested()
    assert nest["linear"]["r2"]["good"]["test_acc"] > 0.9 and nest["linear"]["r2"]["noise"]["test_acc"] < 0.3
    assert nest["linear"]["acc"]["good"]["act"] > 0.9
    assert "optimizer" not in nest["linear"]["acc"]["good"]          # constant on train: skipped
    assert nest["nonlinear"]["tau"]["good"]["epoch"] > 0.8
    saved = json.loads((tmp_path/"p.json").read_text())
    assert len(saved) == len(t) and {r["family"] for r in saved} == {"linear", "nonlinear"}


def test_predict_properties_accepts_columns():
    X, props, split = _toy_zoo()
    cols = {k: np.array([p[k] for p in props]) for k in props[0]}
    a = predict_properties({"x": X}, props, split, families=("linear",))
    b = predict_properties({"x": X}, cols, split, families=("linear",))
    assert a == b


def test_predict_properties_bad_input():
    X, props, split = _toy_zoo()
    with pytest.raises(ValueError, match="'x' has 3 rows"): predict_properties({"x": X[:3]}, props, split)
    with pytest.raises(KeyError, match="'loss'"): predict_properties({"x": X}, props, split, targets=("loss",))
    props[0]["ggap"] = float("nan")
    t = predict_properties({"x": X}, props, split, targets=("ggap",), categorical=(), families=("linear",))
    assert t[0]["n_train"] == len(split["train"]) - 1


def test_stacked_probes_find_what_the_base_lacks(tmp_path):
    rng = np.random.default_rng(3)
    n = 240                                           # 80 models x 3 checkpoints
    seen, unseen = rng.normal(size=(2, n))
    acc = 0.6*seen + 0.6*unseen + 0.05*rng.normal(size=n)
    props = [{"test_acc": float(a), "model_id": i // 3} for i, a in enumerate(acc)]
    split = {"train": np.arange(150), "val": np.arange(150, 195), "test": np.arange(195, n)}
    feats = {"base": seen[:, None], "extra": np.c_[unseen, rng.normal(size=n)], "junk": rng.normal(size=(n, 3))}
    base = {r["family"]: r["r2"] for r in predict_properties({"base": feats["base"]}, props, split, targets=("test_acc",), categorical=())}
    rows = stacked_probes(feats, props, split, base="base", out=tmp_path/"s.json")
    got = {(r["representation"], r["family"]): r["r2"] for r in rows}
    assert set(got) == {(f"base+{k}", fam) for k in ("extra", "junk") for fam in ("linear", "nonlinear")}
    assert got[("base+extra", "linear")] > 0.95 > 0.7 > base["linear"]          # the linear stack recovers the missing half
    assert got[("base+extra", "nonlinear")] > base["nonlinear"] + 0.2
    assert got[("base+junk", "linear")] < base["linear"] + 0.03                  # noise adds nothing
    assert len(json.loads((tmp_path/"s.json").read_text())) == 4
    with pytest.raises(KeyError, match="'s\\(W\\)' is not among"): stacked_probes(feats, props, split)
    with pytest.raises(ValueError, match="folds must be at least 2"): stacked_probes(feats, props, split, base="base", folds=1)
    for r in rows: assert r["base_r2"] == pytest.approx(base[r["family"]])        # each row says what the base alone scores
    with pytest.raises(ValueError, match=f"'twice' has {2*n} rows"):
        stacked_probes({**feats, "twice": np.r_[feats["junk"], feats["junk"]]}, props, split, base="base")
    with pytest.raises(KeyError, match="'loss'"): stacked_probes(feats, props, split, base="base", targets=("loss",))
    one_model = {**split, "train": np.arange(3)}                                  # three checkpoints of one model: nothing to cross-fit
    with pytest.warns(UserWarning, match="too small to stack"): assert len(stacked_probes(feats, props, one_model, base="base")) == 0


# ---------------------------------------------------------------- analysis
@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_powerlaw_alpha_recovers_exponent(alpha):
    rng = np.random.default_rng(int(alpha*10))
    x = 0.5*(1 - rng.random(3000))**(-1/(alpha - 1))
    a, xmin = powerlaw_alpha(x)
    assert abs(a - alpha) < 0.25*alpha and xmin >= 0.5
    assert np.isnan(powerlaw_alpha([0., 1.])[0])


def test_spectral_features_conv_and_order():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    rows = spectral_features(net.state_dict())
    assert [r["key"] for r in rows] == ["0.weight", "1.weight", "1.running_mean", "1.running_var", "3.weight"]
    s = torch.linalg.svdvals(net[0].weight.detach().reshape(8, -1).double())
    assert abs(rows[0]["spectral_norm"] - s[0].item()) < 1e-9
    assert abs(rows[0]["stable_rank"] - ((s**2).sum()/s[0]**2).item()) < 1e-9
    assert np.isnan(rows[1]["spectral_norm"])                      # 1-D BatchNorm weight
    assert [r["layer"] for r in spectral_features(net.state_dict(), ignore_bn=True)] == [0, 1]
    assert spectral_array([net.state_dict()]*3).shape == (3, 5, 3)
    assert pca_2d(np.random.default_rng(0).normal(size=(10, 4))).shape == (10, 2)


def test_embed_std_matches_per_token_latents(tiny_sane):
    tok, pos = torch.randn(2, 40, 16), torch.stack([torch.arange(40), torch.arange(40)//15, torch.arange(40) % 15], 1)
    z = encode_tokens(tiny_sane, tok, pos, halo=2)
    e = embed(tiny_sane, tok, pos, halo=2)
    torch.testing.assert_close(e.model, z.mean(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e.model_std, z.std(1, correction=0), atol=1e-4, rtol=1e-3)
    for l in range(3):
        torch.testing.assert_close(e.layers_std[:, l], z[:, pos[:, 1] == l].std(1, correction=0), atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- benchmark
def test_bench_probe_zoo_smoke():
    from sane_nb.zoo import fixture_zoo
    from sane_nb.bench.probe import probe_zoo, aggregate, summary_markdown
    from sane_nb.probe import ProbeTable
    r = probe_zoo(fixture_zoo(), seed=0, epochs=2, bs=8, categorical=())
    assert r["n_steps"] >= 2 and set(r["time_s"]) == {"tokenize", "pretrain", "diagnose_embed", "probe"}
    assert {"checks", "learned", "retrieval"} <= set(r["diagnosis"])      # every benchmark number comes with its diagnosis
    assert "floor" in r["diagnosis"]["checks"]                             # trained vs untrained SANE is part of "learned"
    agg = aggregate([ProbeTable(r["table"])])
    assert set(agg) == {"linear", "nonlinear"}
    sane = {"sane", "sane_std", "sane_layers"}
    assert set(agg["linear"]["r2"]) == sane | {f"untrained:{k}" for k in sane} | {"s(W)", "s(tokens)", "W"}
    e1 = {r_["target"] for r_ in r["table_e1"]}
    assert e1 >= {"test_acc", "epoch"} and r["table_e1"][0]["n_train"] < r["table"][0]["n_train"]   # epoch-0 checkpoints left out
    assert {"test_acc", "epoch", "ggap", "test_acc_std"} <= set(agg["nonlinear"]["tau"]["s(W)"])
    assert "| hyper | linear | sane |" in summary_markdown({"hyper": agg})


def test_probes_refuse_non_finite_features():
    X = np.random.default_rng(0).normal(size=(30, 4)); X[5, 2] = np.nan
    props = [{"test_acc": float(i)} for i in range(30)]
    split = {"train": np.arange(20), "val": np.arange(20, 25), "test": np.arange(25, 30)}
    with pytest.raises(ValueError, match=r"representation 'sane' has non-finite features \(NaN/Inf\) for checkpoints \[5\]"):
        predict_properties({"sane": X}, props, split, targets=("test_acc",), categorical=())


def test_constant_target_and_tiny_splits():
    "A constant target gets null rows and a warning naming it; a split too small to probe is one clear error"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    props = {"epoch": np.full(40, 60), "test_acc": X[:, 0] + 0.01*rng.normal(size=40)}
    split = {"train": np.arange(28), "val": np.arange(28, 34), "test": np.arange(34, 40)}
    with pytest.warns(UserWarning, match="target 'epoch' is constant"):
        t = predict_properties({"sane": X}, props, split, targets=("test_acc", "epoch"), categorical=(), families=("linear",))
    ep = [r for r in t if r["target"] == "epoch"]
    assert len(ep) == 1 and ep[0]["r2"] is None and ep[0]["tau"] is None
    assert t.nested()["linear"]["r2"]["sane"]["test_acc"] > 0.9
    with pytest.raises(ValueError, match=r"split too small to probe: \{'val': 0\}"):
        predict_properties({"sane": X}, props, {**split, "val": np.arange(0)}, targets=("test_acc",), categorical=())
