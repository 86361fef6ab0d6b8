"""Train the tiny SANE on the synthetic fixture into a run folder; helper of tests/test_train.py and tests/test_ddp.py.

    python tests/train_worker.py OUT [--bs 16] [--epochs 4] [--every 10] [--kill-at STEP] [--fixed-data]
    torchrun --standalone --nproc_per_node 2 tests/train_worker.py OUT --bs 8     # DDP on CPU (gloo)

`--kill-at STEP` kills this process with SIGKILL right after optimizer step STEP (no cleanup, like a crash or an
out-of-memory kill), to test resuming.
"""
import argparse, os, signal

import torch

from sane_nb.model import SaneConfig
from sane_nb.train import Callback, pretrain, synthetic_loaders
from sane_nb.distributed import finish_distributed


class KillAt(Callback):
    "SIGKILL this process after optimizer step `step`"
    order = 99
    def __init__(self, step): self.step = step
    def after_batch(self, learn):
        if learn.step == self.step: os.kill(os.getpid(), signal.SIGKILL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--bs", type=int, default=16)
    p.add_argument("--n-train", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--fixed-data", action="store_true", help="no noise, one window per model: data independent of the RNG")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = SaneConfig.tiny()
    fixed = dict(noise=0.0, n_tokens=cfg.windowsize) if a.fixed_data else {}
    tdl, vdl = synthetic_loaders(cfg, bs=a.bs, n_train=a.n_train, n_valid=16, **fixed)
    cbs = [KillAt(a.kill_at)] if a.kill_at else []
    pretrain(cfg, tdl, vdl, epochs=a.epochs, lr=3e-3, out=a.out, every=a.every, device="cpu", progress=False, cbs=cbs)
    finish_distributed(exit=True)   # under torchrun: leave the process group and end here, not in the interpreter's teardown


if __name__ == "__main__": main()
