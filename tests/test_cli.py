"The console scripts compose: each one's output folder is the next one's input (fixture sizes)."
import json, os, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent

def sh(*args, ok=True):
    "Run a console script of this environment; returns the completed process"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([str(BIN/args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600, env=env)
    if ok: assert res.returncode == 0, res.stderr[-3000:]
    return res

def test_chain(tmp_path):
    sh("sane_zoo", tmp_path/"zoo", "--n_models", 8, "--epochs", 2, "--kind", "seed", "--train_images", 400, "--n_workers", 1)
    assert json.loads((tmp_path/"zoo"/"zoo.json").read_text())["train_images"] == 400
    cfg = tmp_path/"pre.json"
    cfg.write_text(json.dumps({"preset": "tiny", "steps": 12, "bs": 8, "windowsize": 8}))
    out = sh("sane_pretrain", tmp_path/"zoo", tmp_path/"run", "--config", cfg)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["steps"] == 12 and info["preset"] == "tiny" and info["config"]["windowsize"] == 8
    probe = sh("sane_probe", tmp_path/"run", "--linear_only")
    assert "| sane | linear | test_acc |" in probe.stdout
    rows = json.loads((tmp_path/"run"/"probe"/"probe.json").read_text())
    assert {r["representation"] for r in rows} >= {"sane", "s(W)", "W"}
    sample = sh("sane_sample", tmp_path/"run", "--n", 2, "--n_prompts", 2, "--epochs", 1, "--populations", 1, "--k", 0)
    res = json.loads(sample.stdout.strip().splitlines()[-1])
    assert set(res["acc"]) == {"sane", "scratch", "prompts", "noise", "noise_layer"}
    assert (tmp_path/"run"/"sample"/"curves.png").stat().st_size > 1000

def test_clear_errors(tmp_path):
    res = sh("sane_probe", tmp_path/"nothing", ok=False)
    assert res.returncode != 0 and "not a run folder" in res.stderr and "Traceback" not in res.stderr
    res = sh("sane_bench", "speed", ok=False)
    assert res.returncode != 0 and "invalid choice" in res.stderr
    bad = tmp_path/"bad.json"; bad.write_text('{"stepz": 3}')
    res = sh("sane_pretrain", tmp_path/"zoo", tmp_path/"run", "--config", bad, ok=False)
    assert "unknown options ['stepz']" in res.stderr

def test_demo_quick(tmp_path):
    out = sh("sane_demo", "--out", tmp_path/"demo", "--quick")
    assert "sane_nb demo report" in out.stdout
    for f in ("demo.json", "report.md", "probe/probe.json", "probe/pca.png", "sample/sample.json", "sample/curves.png"):
        assert (tmp_path/"demo"/f).exists(), f
