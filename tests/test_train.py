"""Fault injection for SANE training: a SIGKILLed run resumes to bit-identical weights, a NaN loss stops the run with
the last good checkpoint kept, and a checkpoint of another config is refused."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from sane_nb.core import load_json, load_tensors, save_tensors
from sane_nb.model import SANE, SaneConfig
from sane_nb.train import (Callback, CancelFitException, NonFiniteLossError, latest_checkpoint, load_sane, pretrain,
                           synthetic_loaders)

WORKER = Path(__file__).parent/"train_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SANE_DEVICE": "cpu"}


def run_worker(out, *args):
    return subprocess.run([sys.executable, str(WORKER), str(out), *map(str, args)], env=ENV, capture_output=True, text=True, timeout=300)


def weights(folder):
    return load_tensors(latest_checkpoint(folder)/"model.safetensors")


def test_resume_after_kill_is_bit_identical(tmp_path):
    whole, killed = tmp_path/"whole", tmp_path/"killed"
    r = run_worker(whole)
    assert r.returncode == 0, r.stderr
    r = run_worker(killed, "--kill-at", 23)                 # 8 batches/epoch: killed mid-epoch 2
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert latest_checkpoint(killed).name == "step_00000020"  # the last one written before the kill
    assert not list(killed.glob(".*.tmp"))
    r = run_worker(killed)                                   # same command: resumes from step 20
    assert r.returncode == 0, r.stderr
    wa, wb = weights(whole), weights(killed)
    assert latest_checkpoint(whole).name == latest_checkpoint(killed).name == "step_00000032"
    assert wa.keys() == wb.keys()
    for k in wa: assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
    la, lb = load_json(whole/"log.json"), load_json(killed/"log.json")
    assert la["losses"] == lb["losses"] and len(la["losses"]) == 32
    assert [r["valid_loss"] for r in la["history"]] == [r["valid_loss"] for r in lb["history"]]
    assert (killed/"log.csv").read_text().count("\n") == 5  # header + 4 epochs


class Poison(Callback):
    def __init__(self, step): self.step = step
    def before_batch(self, learn):
        if learn.step + 1 == self.step: learn.batch["x"] = learn.batch["x"] * float("nan")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = SaneConfig.tiny()
    tdl, _ = synthetic_loaders(cfg, bs=16, n_train=128)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 13 \(epoch 1, batch 4\).*step_00000012"):
        pretrain(cfg, tdl, epochs=3, lr=3e-3, out=tmp_path, every=4, device="cpu", progress=False, cbs=[Poison(13)])
    assert latest_checkpoint(tmp_path).name == "step_00000012"
    assert load_json(tmp_path/"latest.json")["step"] == 12
    m = load_sane(tmp_path)
    assert all(v.isfinite().all() for v in m.state_dict().values())
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000008", "step_00000012"]  # keep=2


def test_refuses_checkpoint_of_another_config(tmp_path):
    cfg = SaneConfig.tiny()
    tdl, _ = synthetic_loaders(cfg, bs=16, n_train=32)
    pretrain(cfg, tdl, epochs=1, out=tmp_path, device="cpu", progress=False)
    other = SaneConfig(**{**cfg.__dict__, "lat_dim": 4, "n_heads": 4})
    with pytest.raises(ValueError, match=r"another SaneConfig \(n_heads: 2 in the checkpoint vs 4 now, lat_dim: 8 in the checkpoint vs 4 now\)"):
        pretrain(other, tdl, epochs=1, out=tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="1 epochs of 2 batches, this one has 3 of 2"):
        pretrain(cfg, tdl, epochs=3, out=tmp_path, device="cpu", progress=False)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        pretrain(cfg, tdl, epochs=1, out=tmp_path, resume=False, device="cpu", progress=False)


def test_load_sane_without_pickle_and_compile_prefixes(tmp_path):
    cfg = SaneConfig.tiny()
    m = SANE(cfg)
    ck = tmp_path/"ck"
    cfg.to_json(ck/"config.json")
    save_tensors({f"_orig_mod.{k}": v for k, v in m.state_dict().items()}, ck/"model.safetensors")
    m2 = load_sane(ck)
    for k, v in m.state_dict().items(): assert torch.equal(v, m2.state_dict()[k])
    with pytest.raises(FileNotFoundError, match="no SANE checkpoint"): load_sane(tmp_path/"nothing")


def test_positions_beyond_the_maximum_name_the_dimension():
    cfg = SaneConfig.tiny()
    m = SANE(cfg)
    x, pos = torch.randn(1, 8, cfg.tokensize), torch.zeros(1, 8, 3, dtype=torch.long)
    pos[0, 3, 2] = 16
    with pytest.raises(ValueError, match=r"dimension 2 \(row\) has value 16 >= max_positions\[2\]=16"): m(x, pos)


class StopAt(Callback):
    order = 99
    def __init__(self, step): self.step = step
    def after_batch(self, learn):
        if learn.step == self.step: raise CancelFitException()


def test_fp16_grad_scaler_path_resumes_exactly(tmp_path):
    "fp16 autocast + GradScaler (the non-bf16 CUDA path) also runs on CPU: its state is checkpointed and restored"
    cfg = SaneConfig.tiny()
    tdl, vdl = synthetic_loaders(cfg, bs=16, n_train=64)
    kw = dict(epochs=2, lr=3e-3, every=3, device="cpu", progress=False, amp="fp16")
    whole = pretrain(cfg, tdl, vdl, out=tmp_path/"a", **kw)
    assert whole.scaler is not None and whole.dtype == torch.float16
    pretrain(cfg, tdl, vdl, out=tmp_path/"b", cbs=[StopAt(5)], **kw)
    assert latest_checkpoint(tmp_path/"b").name == "step_00000004"
    resumed = pretrain(cfg, tdl, vdl, out=tmp_path/"b", **kw)
    assert resumed.scaler.get_scale() == whole.scaler.get_scale()
    wa, wb = weights(tmp_path/"a"), weights(tmp_path/"b")
    for k in wa: assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"
