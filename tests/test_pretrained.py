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
    assert {p.suffix for p in folder.iterdir()} <= {".json", ".safetensors"}          # nothing that unpickles
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
