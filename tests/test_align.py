"Permutation specs, function-preserving permutations and weight matching of `sane_nb.align`."
import pytest, torch
from torch import nn
from sane_nb.nets import make_net, randomize_bn
from sane_nb.align import (permutation_spec, apply_permutation, random_permutation, weight_matching,
                           align_epochs, PermutationSpec)

SHAPES = {"cnn_small": (3, 1, 28, 28), "cnn_digits": (3, 1, 8, 8), "cnn_large": (3, 3, 32, 32), "resnet18": (2, 3, 32, 32)}

def _net(arch, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(make_net(arch))

def _logits(arch, sd, x):
    net = make_net(arch).eval(); net.load_state_dict(sd)
    with torch.no_grad(): return net(x)

@pytest.mark.parametrize("arch", list(SHAPES))
def test_random_permutation_preserves_function(arch):
    net = _net(arch); sd = net.state_dict(); x = torch.randn(SHAPES[arch])
    psd, perm = random_permutation(sd, generator=torch.Generator().manual_seed(1), return_perm=True)
    torch.testing.assert_close(_logits(arch, psd, x), _logits(arch, sd, x), atol=1e-5, rtol=0)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.values())
    moved = [k for k in sd if sd[k].is_floating_point() and not torch.equal(sd[k], psd[k])]
    assert len(moved) > len(sd)//2
    assert all(torch.equal(sd[k], net.state_dict()[k]) for k in sd)   # input untouched

def test_spec_groups():
    spec = permutation_spec(make_net("cnn_large"))
    assert len(spec.perm_to_axes) == 4
    assert spec.axes_to_perm["module_list.13.weight"] == ("P_module_list.13", "P_module_list.8")
    assert spec.sizes(make_net("cnn_large").state_dict())["P_module_list.8"] == 15       # 60 inputs = 15 blocks of 4
    r = permutation_spec(make_net("resnet18"))
    assert sorted(r.perm_to_axes) == sorted([f"P_bg{i}" for i in range(4)] + [f"P_layer{s}.{b}_inner" for s in range(1, 5) for b in range(2)])
    assert r.axes_to_perm["layer1.0.conv2.weight"][0] == "P_bg0" and r.axes_to_perm["bn1.running_var"] == ("P_bg0",)
    assert r.axes_to_perm["layer4.1.bn2.num_batches_tracked"] == ()
    assert r.axes_to_perm["fc.weight"] == (None, "P_bg3")
    mlp = permutation_spec(nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 3)))
    assert mlp.axes_to_perm == {"0.weight": ("P_0", None), "0.bias": ("P_0",), "1.weight": ("P_0",), "1.bias": ("P_0",),
                                "3.weight": (None, "P_0"), "3.bias": (None,)}

@pytest.mark.parametrize("arch", ["cnn_small", "cnn_large", "resnet18"])
def test_weight_matching_recovers_permutation(arch):
    sd = _net(arch).state_dict()
    spec = permutation_spec(sd)
    shuffled = random_permutation(sd, spec, torch.Generator().manual_seed(5))
    back = apply_permutation(spec, weight_matching(spec, sd, shuffled), shuffled)
    assert all(torch.equal(back[k], sd[k]) for k in sd)

def test_weight_matching_two_models_reduces_distance_keeps_function():
    a, b = _net("cnn_large", 1).state_dict(), _net("cnn_large", 2).state_dict()
    spec = permutation_spec(a)
    perm = weight_matching(spec, a, b)
    al = apply_permutation(spec, perm, b)
    d = lambda u, v: sum(((u[k] - v[k])**2).sum() for k in u)
    assert d(a, al) < d(a, b)
    x = torch.randn(SHAPES["cnn_large"])
    torch.testing.assert_close(_logits("cnn_large", al, x), _logits("cnn_large", b, x), atol=1e-5, rtol=0)
    again = weight_matching(spec, a, al)   # already aligned: identity
    assert all(torch.equal(p, torch.arange(len(p))) for p in again.values())

def test_align_epochs_uses_last_epoch():
    ref = _net("cnn_digits", 0).state_dict()
    eps = [_net("cnn_digits", s).state_dict() for s in (1, 2)]
    spec = permutation_spec(ref)
    aligned, perm = align_epochs(spec, ref, eps)
    assert all(torch.equal(aligned[i][k], apply_permutation(spec, perm, eps[i])[k]) for i in range(2) for k in ref)
    assert all(torch.equal(perm[p], v) for p, v in weight_matching(spec, ref, eps[-1]).items())

def test_bad_input():
    ref = make_net("cnn_digits").state_dict()
    spec = permutation_spec(ref)
    with pytest.raises(ValueError, match="module_list.0.weight"): weight_matching(spec, ref, make_net("cnn_small").state_dict())
    with pytest.raises(ValueError, match="b.weight"): permutation_spec({"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="norm.weight"): permutation_spec({"norm.weight": torch.zeros(4)})
    ident = {p: torch.arange(n) for p, n in spec.sizes(ref).items()}
    with pytest.raises(KeyError, match="extra"): apply_permutation(spec, ident, {**ref, "extra": torch.zeros(1)})
    with pytest.raises(KeyError, match="P_module_list.0"): apply_permutation(spec, {}, ref)
    with pytest.raises(ValueError, match="align_epochs"): align_epochs(spec, ref, [])


def test_module_specs_are_checked_by_a_forward_pass():
    "A residual MLP has a chain's keys; its module is refused rather than given a spec that breaks the shortcut"
    from torch import nn
    class ResMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.blocks, self.out = nn.Linear(10, 16), nn.ModuleList(
                [nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)) for _ in range(2)]), nn.Linear(16, 3)
        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks: h = h + b(h)
            return self.out(torch.relu(h))
    with pytest.raises(ValueError, match="ResMLP is not function-preserving"): permutation_spec(ResMLP())
    for arch in ("cnn_small", "cnn_digits", "cnn_large"):
        permutation_spec(make_net(arch))   # the zoo architectures pass their own check
