"The console scripts compose: each one's output folder is the next one's input (fixture sizes)."
import inspect, json, os, subprocess, sys
from pathlib import Path

BIN = Path(sys.executable).parent

def sh(*args, ok=True):
    "Run a console script of this environment; returns the completed process"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([str(BIN/args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600, env=env)
    if ok: assert res.returncode == 0, res.stderr[-3000:]
    return res

def _strict_json(root):
    "Every JSON file under `root` parsed by a strict parser (NaN and Infinity refused); returns how many"
    files = list(Path(root).rglob("*.json"))
    for f in files:
        json.loads(f.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{f}: {c} is not JSON")))
    return len(files)

def test_chain(tmp_path):
    "The smallest useful zoo (8 models: 5 training, 1 validation, 2 test) through every command"
    grid = tmp_path/"grid.json"; grid.write_text(json.dumps({"act": "relu", "optimizer": "adam"}))
    zoo = sh("sane_zoo", tmp_path/"zoo", "--n_models", 8, "--epochs", 2, "--kind", "seed", "--train_images", 400,
             "--n_workers", 1, "--grid", grid, "--device", "cpu", "--threads", 1)
    assert "| models x checkpoints | 8 x 3 = 24 |" in zoo.stdout and "| computed on | cpu, 1 CPU thread |" in zoo.stdout
    settings = json.loads((tmp_path/"zoo"/"zoo.json").read_text())
    assert settings["train_images"] == 400 and settings["grid"] == {"act": "relu", "optimizer": "adam"}
    assert {m["act"] for m in settings["models"]} == {"relu"}
    cfg = tmp_path/"pre.json"
    cfg.write_text(json.dumps({"preset": "tiny", "steps": 12, "bs": 8, "windowsize": 8, "gamma": 0.5, "lat_dim": 6}))
    out = sh("sane_pretrain", tmp_path/"zoo", tmp_path/"run", "--config", cfg, "--threads", 2)
    assert ", 2 CPU threads |" in out.stdout   # the thread count reached torch (read back from it)
    assert "| learned (every check passed) |" in out.stdout and "| check | value | requirement | passed |" in out.stdout
    info = json.loads((tmp_path/"run"/"run.json").read_text())
    assert info["steps"] == 12 and info["preset"] == "tiny" and info["config"]["windowsize"] == 8 and info["gamma"] == 0.5
    assert "contrastive weight γ 0.5" in out.stdout and "latent 6 per token" in out.stdout and info["config"]["lat_dim"] == 6
    assert sorted(p.name for p in (tmp_path/"run"/"sane").iterdir() if p.name.startswith("step_")) == ["step_00000012"]
    diag = json.loads((tmp_path/"run"/"diagnosis.json").read_text())
    again = sh("sane_diagnose", tmp_path/"run", "--threads", 1)   # the same measures: the same diagnosis, nothing retrained
    assert "| check | value | requirement | passed |" in again.stdout and "latent 6 per token" in again.stdout
    new = json.loads((tmp_path/"run"/"diagnosis.json").read_text())   # (another thread count may move the last digits)
    assert new["learned"] == diag["learned"] and new["checks"].keys() == diag["checks"].keys()
    for k, c in diag["checks"].items():
        assert c["value"] == new["checks"][k]["value"] or abs(c["value"] - new["checks"][k]["value"]) < 1e-4, (k, c, new["checks"][k])
    assert sorted(p.name for p in (tmp_path/"run"/"sane").iterdir() if p.name.startswith("step_")) == ["step_00000012"]
    probe = sh("sane_probe", tmp_path/"run", "--linear_only")
    assert "| r2 on test models | test_acc (linear) | epoch (linear) | ggap (linear) |" in probe.stdout
    assert all(f"| {r} |" in probe.stdout for r in ("s(W)", "s(tokens)", "s(W_rec)")) and "nan" not in probe.stdout.lower()
    rows = json.loads((tmp_path/"run"/"probe"/"probe.json").read_text())
    assert {r["representation"] for r in rows} >= {"sane", "s(W)", "s(tokens)", "s(W_rec)", "W"}
    sample = sh("sane_sample", tmp_path/"run", "--n", 2, "--n_prompts", 2, "--epochs", 1, "--populations", 1, "--k", 0)
    assert "| method | epoch 0 | epoch 1 |" in sample.stdout and "| noise_layer |" in sample.stdout
    res = json.loads((tmp_path/"run"/"sample"/"sample.json").read_text())
    assert set(res["acc"]) == {"sane", "scratch", "prompts", "noise", "noise_layer"}
    assert (tmp_path/"run"/"sample"/"curves.png").stat().st_size > 1000
    assert _strict_json(tmp_path) >= 12
    for r in (zoo, out, probe, sample): assert "\r" not in r.stdout   # no redrawn bars in a log: plain lines

def test_a_zoo_too_small_to_split_gets_a_clear_error_before_any_probing(tmp_path):
    "6 models: the zoo is made (and says it is too small), pretraining works with one warning line, probing is refused"
    res = sh("sane_zoo", tmp_path/"zoo6", "--n_models", 6, "--epochs", 1, "--kind", "seed", "--n_workers", 1)
    assert "| too small | 6 models: SANE's diagnosis and probes need at least 7 |" in res.stdout
    res = sh("sane_pretrain", tmp_path/"zoo6", tmp_path/"run", "--preset", "tiny", "--steps", 2, "--bs", 8)
    warn = [l for l in res.stderr.splitlines() if "too few" in l]
    assert len(warn) == 1 and "at least 7 models" in warn[0] and "Traceback" not in res.stderr, res.stderr
    res = sh("sane_probe", tmp_path/"run", ok=False)
    assert res.returncode != 0 and "at least 7 models" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path/"run"/"probe").exists()
    res = sh("sane_pretrain", tmp_path/"zoo6", tmp_path/"run2", "--device", "cuda:7", ok=False)
    assert "option 'device'" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_clear_errors(tmp_path):
    res = sh("sane_probe", tmp_path/"nothing", ok=False)
    assert res.returncode != 0 and "not a run folder" in res.stderr and "Traceback" not in res.stderr
    res = sh("sane_bench", "speed", ok=False)
    assert res.returncode != 0 and "invalid choice" in res.stderr
    res = sh("sane_bench", "zoo", "--variants", "stats", ok=False)
    assert "sane_bench zoo: this benchmark has no option --variants" in res.stderr and "Traceback" not in res.stderr
    res = sh("sane_bench", "probe", "--gamma", "0.5", ok=False)   # γ is an option of sample and parity; probe has variants
    assert "sane_bench probe: this benchmark has no option --gamma" in res.stderr and "Traceback" not in res.stderr
    from sane_nb.bench import sample, parity, resnet18
    assert "gamma" in inspect.signature(sample.run).parameters and "gamma" in inspect.signature(parity.run).parameters
    assert all("lat_dim" in inspect.signature(m.run).parameters for m in (sample, parity, resnet18))
    assert "bandwidth" in inspect.signature(sample.run).parameters
    assert "layer_stats_head" in inspect.signature(parity.run).parameters
    res = sh("sane_bench", "parity", "--layer_stats_head", "-1", ok=False)  # checked before the zoo is trained
    assert res.stderr.strip() == "sane_bench parity: option 'layer_stats_head' must be a finite number >= 0, got -1.0", res.stderr
    res = sh("sane_bench", "sample", "--gamma", "2", ok=False)             # a bad value: one line, before any work
    assert res.stderr.strip() == "sane_bench sample: option 'gamma' must be a number in [0, 1], got 2.0", res.stderr
    res = sh("sane_bench", "zoo", "--bandwidth", "0.1", ok=False)
    assert "sane_bench zoo: this benchmark has no option --bandwidth" in res.stderr and "Traceback" not in res.stderr
    res = sh("sane_bench", "probe", "--size", "huge", ok=False)
    assert "unknown size 'huge'" in res.stderr and "Traceback" not in res.stderr
    res = sh("sane_bench", "probe", "--variants", "sane,magic", ok=False)
    assert "unknown variants ['magic']" in res.stderr
    bad = tmp_path/"bad.json"; bad.write_text('{"stepz": 3}')
    res = sh("sane_pretrain", tmp_path/"zoo", tmp_path/"run", "--config", bad, ok=False)
    assert "unknown options ['stepz']" in res.stderr

def test_demo_quick(tmp_path):
    out = sh("sane_demo", "--out", tmp_path/"demo", "--quick")
    assert "sane_nb demo report" in out.stdout
    for f in ("demo.json", "report.md", "probe/probe.json", "probe/pca.png", "sample/sample.json", "sample/curves.png"):
        assert (tmp_path/"demo"/f).exists(), f


def _cli(tool, *args, tmp):
    import os, subprocess, sys
    from pathlib import Path
    env = {**os.environ, "SANE_HOME": str(tmp/"home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(Path(sys.executable).parent/tool), *map(str, args)], capture_output=True, text=True, env=env)


def test_bad_options_are_one_line_naming_the_option(tmp_path):
    "Sizes out of range and wrong types from a JSON config: one line naming the option, nothing written"
    from sane_nb.zoo import fixture_zoo
    zoo = fixture_zoo()
    for args, name in ((["--n_models", "0"], "n_models"), (["--epochs", "-1"], "epochs"), (["--n_workers", "0"], "n_workers")):
        r = _cli("sane_zoo", tmp_path/"z", "--n_models", "8", "--epochs", "1", *args, tmp=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and f"option '{name}'" in r.stderr, r.stderr
        assert not (tmp_path/"z").exists()
    (tmp_path/"c.json").write_text('{"steps": "2"}')
    for args, name in ((["--steps", "0"], "steps"), (["--lr", "0"], "lr"), (["--bs", "-1"], "bs"), (["--gamma", "2"], "gamma"),
                       (["--lat_dim", "-1"], "lat_dim"), (["--lat_dim", "third"], "lat_dim"), (["--layer_stats_head", "-1"], "layer_stats_head"),
                       (["--config", tmp_path/"c.json"], "steps")):
        r = _cli("sane_pretrain", zoo.path, tmp_path/"run", "--preset", "tiny", *args, tmp=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and f"option '{name}'" in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.count("pretrain_run:") == 1   # one line, prefixed once
        assert not (tmp_path/"run").exists()


def test_latent_width_half_by_default_or_a_number(tmp_path):
    "--lat_dim: half the token by default, a number from the command line, 0 for the preset's"
    import json
    from sane_nb.zoo import fixture_zoo
    from sane_nb.model import SaneConfig
    zoo = fixture_zoo()
    for name, args, want in (("half", [], "half"), ("five", ["--lat_dim", "5"], 5), ("preset", ["--lat_dim", "0"], 0)):
        r = _cli("sane_pretrain", zoo.path, tmp_path/name, "--preset", "tiny", "--steps", "2", "--bs", "8", "--windowsize", "8",
                 *args, tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        info = json.loads((tmp_path/name/"run.json").read_text())
        tokens = info["config"]["tokensize"]
        assert info["lat_dim"] == want and info["gamma"] == 0.3, info
        assert info["config"]["lat_dim"] == {"half": tokens//2, 5: 5, 0: SaneConfig.tiny().lat_dim}[want]
        assert f"latent {info['config']['lat_dim']} per token of {tokens}" in r.stdout


def test_a_run_that_did_no_work_does_not_block_the_corrected_rerun(tmp_path):
    from sane_nb.zoo import fixture_zoo
    from sane_nb.core import save_json
    zoo = fixture_zoo()
    r = _cli("sane_pretrain", tmp_path/"zoo_typo", tmp_path/"run", "--preset", "tiny", "--steps", "2", tmp=tmp_path)
    assert r.returncode != 0 and "zoo_typo" in r.stderr and "Traceback" not in r.stderr
    save_json({"zoo": "elsewhere", "steps": 7}, tmp_path/"run"/"run.json")      # as an older version left it
    r = _cli("sane_pretrain", zoo.path, tmp_path/"run", "--preset", "tiny", "--steps", "2", "--bs", "8", tmp=tmp_path)
    assert r.returncode == 0, r.stderr


def test_probe_and_sample_options_are_checked():
    import pytest
    from sane_nb.pipeline import sample_run, probe_run
    for kw, name in ((dict(n=0), "'n'"), (dict(populations=-1), "'populations'"), (dict(k=2, n=5), "'k'"), (dict(epochs="5"), "'epochs'")):
        with pytest.raises(ValueError, match=f"sample_run: option {name}"): sample_run("nowhere", **kw)
    with pytest.raises(ValueError, match="option 'families'"): probe_run("nowhere", families=("ridge",))


def test_config_files_take_the_commands_options(tmp_path):
    "A --config file sets what the command line sets (linear_only, k 0, device, threads), and bad grids are one line"
    from sane_nb.zoo import fixture_zoo
    (tmp_path/"dev.json").write_text(json.dumps({"device": "cuda:7"}))
    r = sh("sane_zoo", tmp_path/"z", "--n_models", 8, "--epochs", 1, "--config", tmp_path/"dev.json", ok=False)
    assert "option 'device'" in r.stderr and not (tmp_path/"z").exists()
    for grid in ({"lr": []}, {"lr": ["fast"]}, {"colour": ["red"]}):
        (tmp_path/"g.json").write_text(json.dumps(grid))
        r = sh("sane_zoo", tmp_path/"z", "--n_models", 8, "--epochs", 1, "--grid", tmp_path/"g.json", ok=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr and "grid" in r.stderr, r.stderr
        assert not (tmp_path/"z").exists()
    r = sh("sane_zoo", tmp_path/"z", "--n_models", 8, "--kind", "foo", ok=False)
    assert r.stderr.strip().endswith("'foo'"), r.stderr   # quotes kept
    zoo = fixture_zoo()
    sh("sane_pretrain", zoo.path, tmp_path/"run", "--preset", "tiny", "--steps", 4, "--bs", 8, "--windowsize", 8)
    (tmp_path/"p.json").write_text(json.dumps({"linear_only": True, "threads": 1}))
    out = sh("sane_probe", tmp_path/"run", "--config", tmp_path/"p.json")
    assert "(linear)" in out.stdout and "(nonlinear)" not in out.stdout and "cpu, 1 CPU thread" in out.stdout
    (tmp_path/"s.json").write_text(json.dumps({"k": 0, "n": 2, "n_prompts": 2, "epochs": 1, "populations": 2}))
    out = sh("sane_sample", tmp_path/"run", "--config", tmp_path/"s.json")
    assert "over 2 populations" in out.stdout and json.loads((tmp_path/"run"/"sample"/"sample.json").read_text())["populations"] == 2


def test_embedding_in_shards_then_probing(tmp_path):
    "sane_embed --shard 0/2 and 1/2 at the same time: the last merges, and sane_probe uses the merged embeddings"
    from sane_nb.zoo import fixture_zoo
    sh("sane_pretrain", fixture_zoo().path, tmp_path/"run", "--preset", "tiny", "--steps", 4, "--bs", 8, "--windowsize", 8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(BIN/"sane_embed"), str(tmp_path/"run"), "--shard", s, "--threads", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for s in ("0/2", "1/2")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    # both may finish at once: then both see every part; otherwise exactly one merges (the other says it waits)
    assert sum("embeddings_seed0.safetensors" in o[0] for o in outs) >= 1
    assert sorted(p.name for p in (tmp_path/"run"/"embeddings").iterdir()) == ["embeddings_seed0.safetensors"]
    out = sh("sane_probe", tmp_path/"run", "--linear_only")
    assert "probe: embedding" not in out.stdout and "| s(W) |" in out.stdout   # read, not embedded again
    from sane_nb.pipeline import embed_run, load_run
    run = load_run(tmp_path/"run")
    (tmp_path/"run"/"embeddings"/"embeddings_seed0.safetensors").unlink()
    embed_run(run, shard="0/2")                      # a part of another sharding, left over
    n = len(run.tz) + 3                              # more shards than checkpoints: the empty ones have nothing to do
    merged = [embed_run(run, shard=f"{i}/{n}") for i in range(n)]
    assert merged[-1] is not None and all(m is None for m in merged[:len(run.tz) - 1])
    assert sorted(p.name for p in (tmp_path/"run"/"embeddings").iterdir()) == ["embeddings_seed0.safetensors"]
