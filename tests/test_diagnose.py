"Tests of sane_nb.diagnose: a default SANE learns models, not positions; the checks can fail; the bottleneck warning"
import math, warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from sane_nb.zoo import fixture_zoo
from sane_nb.model import SANE, SaneConfig
from sane_nb.dataset import tokenize_zoo, token_loaders, TokenDataset
from sane_nb.train import pretrain
from sane_nb.train import pretrain_on_zoo
from sane_nb.diagnose import (diagnose, shared_offset_retrieval, reconstruction_error, latent_variance_share,
                              _between_model_share, Diagnosis)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tz(tmp_path_factory):
    "The fixture zoo with the default tokenization (one token per neuron)"
    return tokenize_zoo(fixture_zoo(), tmp_path_factory.mktemp("tok"), progress=False)


@pytest.fixture(scope="module")
def trained(tz):
    "A SANE with every default of pretrain_on_zoo, after a short training"
    return pretrain_on_zoo(tz, steps=300, seed=0)[0]


def test_default_sane_is_not_solvable_by_position(tz, trained):
    "Regression: the default SANE pairs views of a model at a shared window offset, well below chance NT-Xent"
    assert trained.cfg.lat_dim < trained.cfg.tokensize          # a real bottleneck
    r = shared_offset_retrieval(trained, tz, "train", bs=32, seed=1)
    assert r["nt_xent"] < math.log(2*r["bs"] - 1) - 0.5, r
    assert r["top1"] >= 10*r["top1_chance"], r
    assert r["top1_models"] >= 10*r["top1_models_chance"] and r["top1_models"] >= r["top1"], r


def test_untrained_sane_fails_the_checks(tz, trained):
    "The checks can fail: an untrained SANE of the same config retrieves at about chance"
    torch.manual_seed(0)
    d = diagnose(SANE(trained.cfg).eval(), tz, split="train", floor=False)
    assert not d.checks()["retrieval"][2] and not d.checks()["contrastive"][2] and not d.learned
    assert d.checks()["bottleneck"][2]


def test_windows_at_their_own_offsets_are_a_shortcut(tz):
    "Trained with an offset per sample on short windows, SANE pairs views by position: high top-1 only at own offsets"
    tz16 = tokenize_zoo(fixture_zoo(), tz.path.parent/"tok16", tokensize=16, progress=False)
    fit = [int(tz16.pos[:, k].max()) + 1 for k in range(3)]
    cfg = replace(SaneConfig.tiny(), max_positions=fit)               # tokensize 16, lat 8, windows of 8 of 126 tokens
    dl = token_loaders(tz16, 8, 32, splits=("train",), supersample=300, noise=0.1, offsets="sample")["train"]
    sane = pretrain(cfg, dl, epochs=1, lr=3e-3, seed=0, progress=False).model.cpu().eval()
    own = shared_offset_retrieval(sane, tz16, "train", offsets="sample")
    shared = shared_offset_retrieval(sane, tz16, "train")
    assert own["top1"] > 10*own["top1_chance"] and shared["top1"] < own["top1"]/3, (own, shared)
    assert shared["top1_models"] < 10*shared["top1_models_chance"], shared   # other models' views: still below the bar


def test_bottleneck_warning():
    with pytest.warns(UserWarning, match="no bottleneck"): SaneConfig(tokensize=16, d_model=32, n_heads=2, lat_dim=16)
    with pytest.warns(UserWarning, match="no bottleneck"): SaneConfig(tokensize=16, d_model=32, n_heads=2, lat_dim=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SaneConfig(tokensize=16, d_model=32, n_heads=2, lat_dim=15)
        SaneConfig.paper_cnn(); SaneConfig.tiny()


def test_between_model_share():
    "Known cases: identical models -> 0; models that differ only by a constant per model, same at every position -> 1"
    pos_only = torch.randn(1, 7, 3).expand(5, 7, 3)
    assert _between_model_share(pos_only) == pytest.approx(0, abs=1e-12)
    model_only = torch.randn(5, 1, 3).expand(5, 7, 3)
    assert _between_model_share(model_only) == pytest.approx(1)
    mask = torch.ones(7, 3, dtype=torch.bool); mask[:, 2] = False           # padding is left out
    x = model_only.clone(); x[..., 2] = pos_only[..., 2]
    assert _between_model_share(x, mask) == pytest.approx(1)


def test_reconstruction_and_variance_report(tz, trained):
    rec = reconstruction_error(trained, tz, "train")
    assert 0 <= rec["overall"] < 1 and len(rec["by_quartile"]) == 4 and rec["by"] == "test_acc"
    v = latent_variance_share(trained, tz, "train")
    assert 0 < v["latent"] < 1 and 0 < v["tokens"] < 1


def test_diagnosis_round_trip(tz, trained):
    d = diagnose(trained, tz, split="train", floor=True)
    d2 = Diagnosis.from_dict(d.to_dict())
    assert d2.checks() == d.checks() and d2.learned == d.learned
    assert {"trained", "random_init"} <= set(d.floor)
    with pytest.raises(ValueError, match="at least 2"): shared_offset_retrieval(trained, tz, "train", bs=1)
