"""Distributed data parallel on CPU: `torchrun` with the gloo backend and 2 processes, each with half of every batch,
must train the tiny SANE to the same weights (within float tolerance) as one process with the combined batch. This
checks the per-rank data split, the gradient averaging, the global-batch NT-Xent (gathered projections) and the
globally normalised reconstruction loss together."""
import os, subprocess, sys
from pathlib import Path

import torch

from sane_nb.core import load_json, load_tensors
from sane_nb.train import latest_checkpoint

WORKER = Path(__file__).parent/"train_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SANE_DEVICE": "cpu"}
# Each process draws augmentations from its own generator, so random windows and noise cannot match a single
# process's draws; the comparison uses data without randomness (what is tested is the distributed arithmetic).
ARGS = ["--epochs", "2", "--n-train", "64", "--fixed-data"]


def test_two_gloo_processes_match_one_process_with_the_combined_batch(tmp_path):
    one, two = tmp_path/"one", tmp_path/"two"
    r = subprocess.run([sys.executable, str(WORKER), str(one), "--bs", "16", *ARGS], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(WORKER), str(two), "--bs", "8", *ARGS], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert latest_checkpoint(one).name == latest_checkpoint(two).name == "step_00000008"
    assert load_json(latest_checkpoint(two)/"progress.json")["world"] == 2
    wa, wb = (load_tensors(latest_checkpoint(f)/"model.safetensors") for f in (one, two))
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    la, lb = load_json(one/"log.json"), load_json(two/"log.json")
    torch.testing.assert_close(torch.tensor(lb["losses"]), torch.tensor(la["losses"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor([h["valid_loss"] for h in lb["history"]]),
                               torch.tensor([h["valid_loss"] for h in la["history"]]), rtol=1e-4, atol=1e-5)
    assert la["losses"][-1] < la["losses"][0]  # it trained: equal weights are not equal initial weights


def test_sane_pretrain_under_torchrun(tmp_path):
    "The command under torchrun: rank 0 prepares the run folder and reports, both ranks train, steps * bs windows in all"
    from sane_nb.zoo import fixture_zoo
    zoo = fixture_zoo()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
                        str(Path(sys.executable).parent/"sane_pretrain"), str(zoo.path), str(tmp_path/"run"), "--preset", "tiny",
                        "--steps", "20", "--bs", "8", "--windowsize", "8", "--device", "cpu", "--threads", "1"],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("| learned (every check passed) |") == 1       # one report, from rank 0
    assert "(2 processes: 10 optimiser steps of 16)" in r.stdout
    info = load_json(tmp_path/"run"/"run.json")
    assert info["processes"] == 2 and "config" in info and (tmp_path/"run"/"diagnosis.json").exists()
    assert latest_checkpoint(tmp_path/"run"/"sane").name == "step_00000010"
    again = subprocess.run(r.args, env=ENV, capture_output=True, text=True, timeout=600)    # finished: one report, no work
    assert again.returncode == 0 and again.stdout.count("| learned (every check passed) |") == 1, again.stderr[-2000:]
    other = [a if a != "20" else "21" for a in r.args]                                        # another run, same folder
    bad = subprocess.run(other, env=ENV, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and bad.stderr.count("holds another run") == 2                 # both ranks refuse alike
    assert "Connection closed by peer" not in bad.stderr
