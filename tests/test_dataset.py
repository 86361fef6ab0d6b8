"Token datasets: on-disk format, on-the-fly permutations, the batch contract, bad input (a zoo-independent list zoo)."
import numpy as np, pytest, torch
from torch import nn
from sane_nb.nets import make_net
from sane_nb.tokenize import tokenize, token_layout
from sane_nb.align import permutation_spec, apply_permutation, random_permutation
from sane_nb.dataset import TokenPermuter, tokenize_zoo, load_token_zoo, TokenDataset, token_loaders, collate_windows

class ListZoo:
    "A zoo as a list: n_models models x epochs, each model a random permutation of a drifting base (so alignment matters)"
    def __init__(self, arch="cnn_digits", n_models=6, epochs=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.items, base = [], make_net(arch).state_dict()
        spec = permutation_spec(base)
        for m in range(n_models):
            perm = {p: torch.randperm(n, generator=g) for p, n in spec.sizes(base).items()}
            for e in range(epochs):
                sd = {k: v + 0.01*(e + 1)*torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in base.items()}
                self.items.append((apply_permutation(spec, perm, sd), {"model_id": m, "epoch": e, "test_acc": 0.1*m + 0.01*e,
                                                                      "act": "tanh"}))
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]

@pytest.fixture(scope="module")
def tz(tmp_path_factory):
    zoo = ListZoo()
    splits = {"train": np.arange(0, 12), "val": np.arange(12, 15), "test": np.arange(15, 18)}
    return tokenize_zoo(zoo, tmp_path_factory.mktemp("tok")/"tz", splits=splits, progress=False), zoo

def test_format_and_round_trip(tz):
    tz, zoo = tz
    n, N, T = tz.tokens.shape
    assert (n, N, T) == (18, 48, 73)
    assert set(p.name for p in tz.path.iterdir()) == {"tokens.npy", "tokens.json", "normalization.json", "reference.safetensors"}
    again = load_token_zoo(tz.path)
    assert torch.equal(again.tokens, tz.tokens) and again.splits["val"].tolist() == [12, 13, 14]
    x = torch.randn(4, 1, 8, 8)
    for i in (0, 7, 17):       # aligned + standardised + tokenized, then back: the same function
        a, b = make_net("cnn_digits").eval(), make_net("cnn_digits").eval()
        a.load_state_dict(zoo[i][0]); b.load_state_dict(tz.state_dict(i))
        with torch.no_grad(): torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=0)
    # alignment undoes the random permutations: epochs of all models end up close to the reference
    ref = tz.state_dict(tz.meta["reference_index"])
    d = lambda s: sum(((s[k] - ref[k])**2).sum() for k in ref).item()
    raw = np.mean([d(zoo[i][0]) for i in range(0, 18, 3)]); aligned = np.mean([d(tz.state_dict(i)) for i in range(0, 18, 3)])
    assert aligned < 0.5*raw

def test_stats_from_train_only(tz):
    tz, _ = tz
    tr, va = tz.sequences("train"), tz.sequences("val")
    m = tr["mask"]
    assert abs(tr["tokens"][:, m].mean()) < 0.05 and tr["props"]["test_acc"].shape == (12,)
    assert "act" not in tr["props"] and tr["index"].tolist() == list(range(12))
    assert va["tokens"].shape == (3, 48, 73)

@pytest.mark.parametrize("arch,T", [("cnn_large", 0), ("resnet18", 288)])
def test_permuter_matches_state_dict_permutation(arch, T):
    sd = make_net(arch).state_dict()
    spec, lay = permutation_spec(sd), token_layout(sd, T)
    pm = TokenPermuter(lay, spec, spec.sizes(sd))
    perms = pm.draw(3, torch.Generator().manual_seed(0))
    tok = tokenize(sd, layout=lay)[0].flatten()
    win = torch.stack([torch.arange(s, s + 40) for s in (0, 9, lay.n_tokens - 40)])
    idx = pm.source_index(perms, win)
    for b in range(3):
        want = tokenize(apply_permutation(spec, pm.perm_dict(perms[b]), sd), layout=lay)[0][win[b]]
        assert torch.equal(tok[idx[b]], want)

def test_batch_contract(tz):
    tz, _ = tz
    ds = TokenDataset(tz, "train", windowsize=16, noise=0.1, erase=1.0, supersample=2)
    assert len(ds) == 24
    b = ds.__getitems__(list(range(10)))
    assert b["x"].shape == (10, 2, 16, 73) and b["x"].dtype == torch.float32
    assert b["mask"].shape == (10, 16, 73) and b["mask"].dtype == torch.bool
    assert b["pos"].shape == (10, 16, 3) and b["pos"].dtype == torch.long
    assert set(b["props"]) >= {"test_acc", "epoch", "model_id"} and all(v.shape == (10,) and v.dtype == torch.float32 for v in b["props"].values())
    assert (b["x"]*~b["mask"][:, None]).abs().sum() == 0                     # padding stays zero
    assert ((b["x"] == 0) & b["mask"][:, None]).sum() > 0                      # erasing happened
    assert (b["pos"][:, 1:, 0] - b["pos"][:, :-1, 0] == 1).all()              # contiguous windows
    assert len(set(b["pos"][:, 0, 0].tolist())) == 1                           # one offset shared by the batch
    own = TokenDataset(tz, "train", windowsize=16, offsets="sample").__getitems__(list(range(10)))
    assert len(set(own["pos"][:, 0, 0].tolist())) > 1                          # offsets="sample": one per sample
    one = ds[3]
    assert one["x"].shape == (2, 16, 73) and one["props"]["test_acc"].shape == ()
    dl = token_loaders(tz, windowsize=16, bs=4)["train"]
    assert len(dl) == 9 and next(iter(dl))["x"].shape == (4, 2, 16, 73)
    assert collate_windows([one, one])["x"].shape == (2, 2, 16, 73)

def test_views_without_noise(tz):
    tz, _ = tz
    ds = TokenDataset(tz, "val", windowsize=48, noise=0., seed=1)
    b = ds.__getitems__([0, 1, 2])
    for s in range(3):   # full window: view 2 is the whole model permuted: same values per layer
        for l in range(5):
            sel = b["pos"][s, :, 1] == l
            assert torch.equal(b["x"][s, 0, sel].flatten().sort().values, b["x"][s, 1, sel].flatten().sort().values)
    assert not torch.equal(b["x"][:, 0], b["x"][:, 1])
    assert torch.equal(ds.__getitems__([0, 1, 2])["x"], b["x"])   # seeded: reproducible
    same = TokenDataset(tz, "val", windowsize=48, noise=0., permute=False).__getitems__([0])
    assert torch.equal(same["x"][:, 0], same["x"][:, 1])

def test_bad_input(tz, tmp_path):
    tz, _ = tz
    with pytest.raises(ValueError, match="49 does not fit the sequence of 48"): TokenDataset(tz, "train", windowsize=49)
    with pytest.raises(KeyError, match="nope"): TokenDataset(tz, "nope")
    with pytest.raises(ValueError, match="empty"): tokenize_zoo([], tmp_path/"x")
    bad = tmp_path/"cut"; bad.mkdir()
    for f in tz.path.iterdir(): (bad/f.name).write_bytes(f.read_bytes())
    (bad/"tokens.npy").write_bytes((tz.path/"tokens.npy").read_bytes()[:-73*4*48])
    with pytest.raises(ValueError, match="tokens.npy"): load_token_zoo(bad)
