"A pretrained SANE as a folder: JSON and safetensors only, loaded in a fresh process, pointed at networks it knows"
import json, os, subprocess, sys
from pathlib import Path

import pytest


def test_a_saved_pretrained_sane_predicts_in_a_fresh_process(tmp_path):
    from sane_nb.zoo import fixture_zoo
    from sane_nb.pipeline import pretrain_run
    from sane_nb.pretrained import from_run
    zoo = fixture_zoo()
    pretrain_run(zoo.path, tmp_path/"run", preset="tiny", steps=10, bs=8, windowsize=None, progress=False)
    ps = from_run(tmp_path/"run")
    folder = ps.save_pretrained(tmp_path/"pretrained")
    assert {p.suffix for p in folder.iterdir()} <= {".json", ".safetensors", ".md"}   # nothing that unpickles
    want = {t: v.tolist() for t, v in ps.predict([zoo.make_model(3)]).items()}
    code = ("import json, sys\nfrom sane_nb.pretrained import load_pretrained\nfrom sane_nb.zoo import fixture_zoo\n"
            "p = load_pretrained(sys.argv[1])\nprint(json.dumps({t: v.tolist() for t, v in p.predict([fixture_zoo().make_model(3)]).items()}))\n"
            "try: p.embed([{'w': __import__('torch').zeros(2)}])\nexcept ValueError as e: print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[0])
    assert got.keys() == want.keys() and all(abs(a - b) < 1e-6 for t in got for a, b in zip(got[t], want[t]))
    assert "model 0 is not a cnn_digits this SANE knows (missing" in r.stdout
    with pytest.raises(FileNotFoundError, match="not a pretrained SANE"):
        from sane_nb.pretrained import load_pretrained
        load_pretrained(tmp_path)


def test_sampled_networks_are_networks_of_the_known_architecture(tmp_path):
    import torch
    from torch import nn
    from sane_nb.zoo import fixture_zoo
    from sane_nb.pipeline import pretrain_run
    from sane_nb.pretrained import from_run
    zoo = fixture_zoo()
    pretrain_run(zoo.path, tmp_path/"run", preset="tiny", steps=10, bs=8, windowsize=None, progress=False)
    ps = from_run(tmp_path/"run")
    new = ps.sample([zoo.make_model(4), zoo.make_model(9)], n=3, seed=1)
    assert len(new) == 3 and all(isinstance(m, nn.Module) and not m.training for m in new)
    out = new[0](torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no models given"): ps.sample([], n=1)


def test_sane_predict_reads_checkpoint_files_and_zoo_folders(tmp_path):
    import torch
    from sane_nb.zoo import fixture_zoo
    from sane_nb.pipeline import pretrain_run
    from sane_nb.pretrained import from_run
    from sane_nb.core import save_tensors
    zoo = fixture_zoo()
    pretrain_run(zoo.path, tmp_path/"run", preset="tiny", steps=10, bs=8, windowsize=None, progress=False)
    from_run(tmp_path/"run").save_pretrained(tmp_path/"pre")
    torch.save({"state_dict": {"module." + k: v for k, v in zoo[7][0].items()}}, tmp_path/"a.pt")
    save_tensors(zoo[3][0], tmp_path/"b.safetensors")
    bin_ = Path(sys.executable).parent/"sane_predict"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(bin_), str(tmp_path/"pre"), str(tmp_path/"a.pt"), str(tmp_path/"b.safetensors"), str(zoo.path),
                        "--out", str(tmp_path/"p.json"), "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| checkpoint | test_acc | epoch | ggap |" in r.stdout and "| a.pt |" in r.stdout and "| b.safetensors |" in r.stdout
    res = json.loads((tmp_path/"p.json").read_text(), parse_constant=lambda c: 1/0)     # strict JSON
    assert len(res["checkpoints"]) == 2 + len(zoo) and len(res["predictions"]["test_acc"]) == 2 + len(zoo)
    bad = subprocess.run([str(bin_), str(tmp_path/"pre"), str(tmp_path/"nothing.pt")], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "nothing.pt: file not found" in bad.stderr and "Traceback" not in bad.stderr
    from sane_nb.nets import make_net
    save_tensors(make_net("cnn_small").state_dict(), tmp_path/"other.safetensors")
    bad = subprocess.run([str(bin_), str(tmp_path/"pre"), str(tmp_path/"a.pt"), str(tmp_path/"other.safetensors")],
                         capture_output=True, text=True, env=env)
    assert "other.safetensors is not a cnn_digits this SANE knows" in bad.stderr and "Traceback" not in bad.stderr
    cfg = json.loads((tmp_path/"pre"/"config.json").read_text()); cfg["sane"]["d_model"] += 1
    (tmp_path/"pre"/"config.json").write_text(json.dumps(cfg))
    bad = subprocess.run([str(bin_), str(tmp_path/"pre"), str(tmp_path/"a.pt")], capture_output=True, text=True, env=env)
    assert "an inconsistent pretrained SANE" in bad.stderr and "Traceback" not in bad.stderr


def test_hub_conventions_offline(tmp_path, monkeypatch):
    "save_pretrained / from_pretrained of huggingface_hub on a local folder; a Hub repo id goes through snapshot_download"
    from sane_nb.zoo import fixture_zoo
    from sane_nb.pipeline import pretrain_run
    from sane_nb import pretrained
    zoo = fixture_zoo()
    pretrain_run(zoo.path, tmp_path/"run", preset="tiny", steps=10, bs=8, windowsize=None, progress=False)
    ps = pretrained.from_run(tmp_path/"run")
    folder = ps.save_pretrained(tmp_path/"pre")
    card = (folder/"README.md").read_text()
    assert card.startswith("---\nlibrary_name: sane_nb") and "load_pretrained" in card and "| test_acc |" in card
    assert "nan" not in card.split("The full card")[0]                          # the R² columns, s(W)'s too, are filled
    want = ps.predict([zoo.make_model(3)])["test_acc"]
    back = pretrained.PretrainedSANE.from_pretrained(folder)                  # the mixin's door, local folder
    assert abs(back.predict([zoo.make_model(3)])["test_acc"] - want).max() < 1e-6
    asked = []
    def fake_download(repo_id, revision=None, **kw): asked.append((repo_id, revision)); return str(folder)
    monkeypatch.setattr(pretrained, "snapshot_download", fake_download)       # what the Hub would hand back
    hub = pretrained.load_pretrained("someone/a-sane", revision="v1")
    assert asked == [("someone/a-sane", "v1")] and abs(hub.predict([zoo.make_model(3)])["test_acc"] - want).max() < 1e-6
    def offline(repo_id, **kw): raise OSError("Name or service not known")
    monkeypatch.setattr(pretrained, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="someone/other: no such local folder, and the Hugging Face Hub repo could not be downloaded"):
        pretrained.load_pretrained("someone/other")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face Hub repo id"):
        pretrained.load_pretrained(tmp_path/"no"/"such"/"folder")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face Hub repo id"):   # the mixin's door says the same
        pretrained.PretrainedSANE.from_pretrained(tmp_path/"no"/"such"/"folder")


def test_the_shipped_sane_in_five_lines(tmp_path):
    "The five lines a user types, on the SANE installed with the package, offline; its reference (a trained checkpoint of its zoo) predicted far above an untrained net"
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from sane_nb.pretrained import load_pretrained, shipped_folder, SHIPPED
    from sane_nb.nets import make_net
    from sane_nb.align import random_permutation
    assert "cnn-s-fashion-mnist" in SHIPPED
    assert sum(f.stat().st_size for f in shipped_folder("cnn-s-fashion-mnist").iterdir()) <= 5*2**20
    sane = load_pretrained("cnn-s-fashion-mnist")
    assert sane.card["learned"] is True and sane.arch["arch"] == "cnn_small"       # shipped only because it passed
    ref = sane.card["reference"]                                                 # a trained network of its zoo
    net_a = make_net("cnn_small", init=ref["init"], seed=7, act=ref["act"])     # untrained: chance accuracy
    net_b = make_net("cnn_small", act=ref["act"])
    net_b.load_state_dict(random_permutation(sane.reference, generator=torch.Generator().manual_seed(1)))  # same function, neurons shuffled
    emb = sane.embed([net_a, net_b])
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
    pred = sane.predict([net_a, net_b])
    assert set(pred) == {"test_acc", "epoch", "ggap"}
    assert pred["test_acc"][1] > pred["test_acc"][0] + 0.3 and pred["epoch"][1] > pred["epoch"][0] + 3, (pred, ref)  # trained vs untrained
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 28, 28, generator=g); y = torch.randint(0, 10, (256,), generator=g)  # any images: the mechanics
    new = sane.sample([net_a, net_b], n=4, data=DataLoader(TensorDataset(x, y), batch_size=64))
    assert len(new) == 4 and all(str(m) == str(net_a) and torch.isfinite(m(x[:8])).all() for m in new)
    back = load_pretrained(sane.save_pretrained(tmp_path/"my_sane"))
    assert torch.allclose(back.embed([net_b]), sane.embed([net_b]), atol=1e-6)


def test_sane_embed_writes_a_table_of_embeddings_of_checkpoint_files(tmp_path):
    "sane_embed with the shipped SANE and checkpoint files: a printed table and a CSV with one row per checkpoint"
    import csv, torch
    from sane_nb.nets import make_net
    from sane_nb.core import save_tensors
    from sane_nb.pretrained import load_pretrained
    nets = [make_net("cnn_small", init="kaiming_uniform", seed=i) for i in range(2)]
    save_tensors(nets[0].state_dict(), tmp_path/"a.safetensors")
    torch.save({"state_dict": nets[1].state_dict()}, tmp_path/"b.pt")
    bin_, env = Path(sys.executable).parent/"sane_embed", {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(bin_), "cnn-s-fashion-mnist", str(tmp_path/"a.safetensors"), str(tmp_path/"b.pt"), "--out", str(tmp_path/"e.csv"),
                        "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| a.safetensors |" in r.stdout and "| b.pt |" in r.stdout
    rows = list(csv.reader((tmp_path/"e.csv").open()))
    want = load_pretrained("cnn-s-fashion-mnist").embed(nets)
    assert rows[0][0] == "checkpoint" and [x[0] for x in rows[1:]] == ["a.safetensors", "b.pt"] and len(rows[1]) == 1 + want.shape[1]
    assert torch.allclose(torch.tensor([[float(v) for v in x[1:]] for x in rows[1:]]), want, atol=1e-4)
    bad = subprocess.run([str(bin_), "cnn-s-fashion-mnist", str(tmp_path/"a.safetensors"), "--out", str(tmp_path/"e.txt")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "write a .csv or a .json file" in bad.stderr and "Traceback" not in bad.stderr
