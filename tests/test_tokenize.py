"Round trips, layout facts, standardisation and bad input of `sane_nb.tokenize` on every zoo architecture."
import pytest, torch
from torch import nn
from sane_nb.nets import make_net
from sane_nb.tokenize import (tokenize, detokenize, auto_tokensize, token_layout, LayerStats,
                              standardize, destandardize)

def _sd(arch, seed=0):
    torch.manual_seed(seed)
    net = make_net(arch)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.normal_(); m.bias.data.normal_(); m.running_mean.normal_(); m.running_var.uniform_(.5, 2)
    return net.state_dict()

@pytest.mark.parametrize("arch", ["cnn_small", "cnn_digits", "cnn_large", "resnet18"])
@pytest.mark.parametrize("ignore_bn", [False, True])
def test_round_trip_exact(arch, ignore_bn):
    sd = _sd(arch)
    for T in (0, 64, 288):
        tok, mask, pos = tokenize(sd, T, ignore_bn=ignore_bn)
        assert tok.dtype == torch.float32 and mask.dtype == torch.bool and pos.dtype == torch.long
        assert tok[~mask].abs().sum() == 0                  # padding is zero
        bn = {k.rsplit(".", 1)[0] for k in sd if k.endswith("running_mean")}
        kept = [k for k in sd if "num_batches" not in k and not (ignore_bn and k.rsplit(".", 1)[0] in bn)]
        assert int(mask.sum()) == sum(sd[k].numel() for k in kept)
        sd2 = detokenize(tok, pos, sd, ignore_bn=ignore_bn)
        assert list(sd2) == list(sd)
        for k in sd: assert torch.equal(sd2[k], sd[k]), k

def test_published_sizes():
    assert auto_tokensize(_sd("cnn_large")) == 289
    assert tokenize(_sd("cnn_large"), 0)[0].shape == (93, 289)
    sd = _sd("resnet18")
    tok, mask, pos = tokenize(sd, 288)
    assert tok.shape == (53524, 288)
    assert pos.max(0).values.tolist() == [53523, 80, 511]
    assert auto_tokensize(sd) == 512*9           # a bias-free conv row: the published auto size misses it
    assert len(token_layout(sd, 288, ignore_bn=True).entries) == 21

def test_positions_and_chunks():
    sd = {"a.weight": torch.arange(12.).view(2, 6), "a.bias": torch.tensor([100., 200.])}
    tok, mask, pos = tokenize(sd, 4)
    assert tok.tolist() == [[0, 1, 2, 3], [4, 5, 100, 0], [6, 7, 8, 9], [10, 11, 200, 0]]
    assert pos.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 0, 1]]
    assert mask.sum(1).tolist() == [4, 3, 4, 3]

def test_standardize_train_stats_and_inverse(tmp_path):
    train = [_sd("cnn_digits", s) for s in range(4)]
    test = _sd("cnn_digits", 99)
    stats = LayerStats.from_state_dicts(train)
    z = [standardize(s, stats) for s in train]
    v = torch.cat([torch.cat([s["module_list.0.weight"].flatten(), s["module_list.0.bias"]]) for s in z])
    assert abs(v.mean()) < 1e-5 and abs(v.std() - 1) < 1e-5
    back = destandardize(standardize(test, stats), stats)
    for k in test: torch.testing.assert_close(back[k], test[k])
    stats.save(tmp_path/"norm.json")
    assert LayerStats.load(tmp_path/"norm.json") == stats

def test_bad_input_messages():
    sd = _sd("cnn_digits")
    tok, mask, pos = tokenize(sd, 16)
    with pytest.raises(ValueError, match="another architecture"): detokenize(tok, pos, _sd("cnn_small"))
    with pytest.raises(ValueError, match="another architecture"): detokenize(tok[:-1], pos[:-1], sd)
    with pytest.raises(ValueError, match="pos_embed"): tokenize({**sd, "pos_embed": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="lonely.bias"): tokenize({"lonely.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="idx.weight"): tokenize({"idx.weight": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match="tokensize"): tokenize(sd, -1)
    with pytest.raises(KeyError, match="module_list"): LayerStats.from_state_dicts([sd]).standardize_tokens(
        *tokenize(_sd("cnn_large"), 16), token_layout(_sd("cnn_large"), 16))


# ---------------------------------------------------------------- non-finite weights
def _nan_sd():
    from sane_nb.nets import make_net
    sd = make_net("cnn_digits").state_dict()
    sd["module_list.3.weight"][0, 0, 0, 0] = float("nan"); sd["module_list.9.bias"][1] = float("inf")
    return sd

def test_non_finite_weights_are_refused_by_name():
    import pytest
    from sane_nb.tokenize import tokenize, LayerStats
    from sane_nb.align import permutation_spec, weight_matching
    sd = _nan_sd()
    with pytest.raises(ValueError, match=r"'module_list.3.weight' \(1 NaN, 0 Inf\)"): tokenize(sd, 16)
    with pytest.raises(ValueError, match="state dict 1: non-finite weights in 'module_list.3.weight'"):
        LayerStats.from_state_dicts([{k: v.nan_to_num() for k, v in sd.items()}, sd])
    good = {k: v.nan_to_num(posinf=0.) for k, v in sd.items()}
    with pytest.raises(ValueError, match="the model to align: non-finite"): weight_matching(permutation_spec(good), good, sd)

def test_tokenize_zoo_names_the_bad_checkpoint(tmp_path):
    "One NaN checkpoint must stop tokenize_zoo with its index, before it poisons every model's statistics"
    import pytest
    from sane_nb.zoo import fixture_zoo
    from sane_nb.dataset import tokenize_zoo
    zoo = fixture_zoo()
    class Poisoned:
        def __len__(self): return len(zoo)
        def __getitem__(self, i):
            sd, p = zoo[i]
            return (_nan_sd() if i == 7 else sd), p
    with pytest.raises(ValueError, match="checkpoint 7: non-finite"): tokenize_zoo(Poisoned(), tmp_path/"t", progress=False)
    assert not (tmp_path/"t"/"tokens.npy").exists()
