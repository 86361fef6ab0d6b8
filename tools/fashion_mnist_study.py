"""Run the Fashion-MNIST study of `nbs/tutorials/fashion_mnist.ipynb` and write its small results folder.

    apt-get install dataset-fashion-mnist
    python tools/fashion_mnist_study.py --root /tmp/fmnist     # about 2 hours on 2 CPU cores

The study is the console-script chain `sane_zoo` -> `sane_pretrain` -> `sane_probe` -> `sane_sample`: one zoo, then
SANE pretrained, probed and sampled once per seed (the seed also moves the 70/15/15 split of the zoo's models, so
the spread over seeds covers the split, SANE's initialisation and the sampling together). Every step resumes where
it stopped; a finished step is not run again, its command, date and wall time are kept in `ROOT/steps.json`.
Two steps run at a time, each on one PyTorch thread (the zoo step uses two worker processes by itself).
The results folder (`--results`) gets JSON files with every number, each with the commands, dates, machine and wall
times that produced it, and the plots the tutorial shows.
"""
import argparse, os, platform, shutil, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sane_nb.core import load_json, save_json

BIN = Path(sys.executable).parent
ZOO_ARGS = "--dataset fashion_mnist --n_models 300 --epochs 15 --kind hyper --seed 0 --train_images 10000 --n_workers 2"
PRETRAIN_ARGS = "--steps 3000 --bs 16"   # the defaults otherwise: the published small-CNN SANE, a latent of half the token, γ 0.3
SAMPLE_ARGS = "--n 3 --n_prompts 3 --epochs 5 --populations 3 --k 10"
QUICK = dict(ZOO_ARGS="--dataset digits --n_models 12 --epochs 2 --kind hyper --seed 0 --train_images 400 --n_workers 1",
             PRETRAIN_ARGS="--preset tiny --steps 10 --bs 8", SAMPLE_ARGS="--n 2 --n_prompts 2 --epochs 1 --populations 2 --k 3")
_lock = threading.Lock()

def machine()->str:
    "The machine in words: CPU model, cores, GPU (none here), torch version"
    import torch
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}, torch {torch.__version__}, one PyTorch thread per process"

def _last_line(text:str)->str:
    "The last line a command printed (progress bars redraw their line with carriage returns)"
    lines = [l.strip() for l in text.replace("\r", "\n").splitlines() if l.strip()]
    return lines[-1][-1000:] if lines else ""

def _finished(root:Path)->dict:
    "The records of the steps that finished (`ROOT/steps.json`)"
    return load_json(root/"steps.json") if (root/"steps.json").exists() else {}

def step(root:Path, name:str, command:str)->dict:
    "Run one console-script command unless `ROOT/steps.json` says it finished; returns its record"
    with _lock: done = _finished(root)
    if name in done: return done[name]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {command}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    t0, date, load = time.time(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]
    log = root/f"{name}.log"
    with open(log, "w") as f:
        rc = subprocess.run([str(BIN/command.split()[0]), *command.split()[1:]], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc: raise SystemExit(f"{name} failed (exit {rc}); see {log}")
    rec = dict(command=f"OMP_NUM_THREADS=1 {command}", wall_s=round(time.time() - t0, 1), date=date,
               load_avg_at_start=load, last_line=_last_line(log.read_text()))
    with _lock: save_json({**_finished(root), name: rec}, root/"steps.json")
    print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {rec['wall_s']:.0f} s", flush=True)
    return rec

def run_all(root:Path, seeds:list[int]):
    "The zoo, then per seed pretrain -> (probe, sample), two steps at a time"
    step(root, "zoo", f"sane_zoo {root/'zoo'} {ZOO_ARGS}")
    with ThreadPoolExecutor(2) as ex:
        pre = {s: ex.submit(step, root, f"pretrain_{s}", f"sane_pretrain {root/'zoo'} {root/f'run_{s}'} {PRETRAIN_ARGS} --seed {s}")
               for s in seeds}
        after = lambda s, name, cmd: (pre[s].result(), step(root, name, cmd))[1]
        rest = [ex.submit(after, s, f"{k}_{s}", cmd) for s in seeds for k, cmd in
                (("probe", f"sane_probe {root/f'run_{s}'} --seed {s}"),
                 ("sample", f"sane_sample {root/f'run_{s}'} {SAMPLE_ARGS} --seed {s}"))]
        for f in [*pre.values(), *rest]: f.result()

def _mean_std(xs): return {"mean": float(np.mean(xs)), "std": float(np.std(xs)), "n": len(xs)}

def collect_zoo(root:Path, res:Path, rec:dict, mach:str):
    "Zoo settings, accuracy and generalisation gap per epoch, and a plot of every model's curves"
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sane_nb.zoo import load_zoo, zoo_images
    zoo = load_zoo(root/"zoo")
    P, meta = zoo.props, zoo.meta
    ggap = P["train_acc"] - P["test_acc"]
    per_epoch = {int(e): {"min": float(P["test_acc"][P["epoch"] == e].min()),
                          "median": float(np.median(P["test_acc"][P["epoch"] == e])),
                          "max": float(P["test_acc"][P["epoch"] == e].max()),
                          "at_chance": int((P["test_acc"][P["epoch"] == e] < 0.15).sum()),
                          "ggap_median": float(np.median(ggap[P["epoch"] == e]))} for e in zoo.epochs}
    settings = {k: v for k, v in meta.items() if k != "models"}
    save_json(dict(rec, machine=mach, zoo=settings, checkpoints=len(zoo), test_images=len(zoo_images(meta).y_test),
                test_acc_per_epoch=per_epoch), res/"zoo.json")
    colours = {"relu": "C0", "tanh": "C1", "sigmoid": "C2", "gelu": "C3"}
    fig, axs = plt.subplots(1, 2, figsize=(9, 3.2))
    for m in range(len(zoo.models)):
        sel = P["model_id"] == P["model_id"][P["epoch"] == 0][m]
        c = colours.get(str(P["act"][sel][0]), "k")
        axs[0].plot(P["epoch"][sel], P["test_acc"][sel], c=c, alpha=.35, lw=.8)
        axs[1].plot(P["epoch"][sel], ggap[sel], c=c, alpha=.35, lw=.8)
    for a, c in colours.items(): axs[0].plot([], [], c=c, label=a)
    axs[0].legend(fontsize=7)
    axs[0].set(xlabel="epoch", ylabel="test accuracy", title=f"{len(zoo.models)} models")
    axs[1].set(xlabel="epoch", ylabel="train acc - test acc", title="generalisation gap")
    fig.tight_layout(); fig.savefig(res/"zoo_acc.png", dpi=90); plt.close(fig)

def collect_runs(root:Path, res:Path, steps:dict, seeds:list[int], mach:str):
    "Per seed: pretraining, probe rows and sampling summaries; then mean and std over seeds"
    pre = [dict(steps[f"pretrain_{s}"], run={k: v for k, v in load_json(root/f"run_{s}"/"run.json").items()
                                              if k != "config"}) for s in seeds]
    cfg = load_json(root/f"run_{seeds[0]}"/"run.json")["config"]
    save_json(dict(machine=mach, seeds=pre, config={k: cfg[k] for k in ("n_layers", "d_model", "n_heads", "lat_dim",
                                                                        "windowsize", "tokensize")}), res/"pretrain.json")
    rows = {s: load_json(root/f"run_{s}"/"probe"/"probe.json") for s in seeds}
    rows = {s: r["rows"] if isinstance(r, dict) else r for s, r in rows.items()}
    keyed = {}
    for s in seeds:
        for r in rows[s]:
            metric = "r2" if r.get("r2") is not None else "acc"
            keyed.setdefault((r["representation"], r["family"], r["target"], metric), []).append(r[metric])
    summary = [dict(representation=k[0], family=k[1], target=k[2], metric=k[3], **_mean_std(v)) for k, v in keyed.items()]
    save_json(dict(machine=mach, runs=[dict(steps[f"probe_{s}"], seed=s, rows=rows[s]) for s in seeds], summary=summary),
           res/"probe.json")
    samples = {s: load_json(root/f"run_{s}"/"sample"/"sample.json") for s in seeds}
    acc = {m: {e: _mean_std([samples[s]["acc"][m][e] for s in seeds]) for e in samples[seeds[0]]["acc"][m] if "_" not in e}
           for m in samples[seeds[0]]["acc"]}
    nov = {m: {k: _mean_std([samples[s]["novelty"][m][k] for s in seeds]) for k in ("l2", "rel_l2", "iou", "acc")}
           for m in samples[seeds[0]].get("novelty", {})}
    save_json(dict(machine=mach, runs=[dict(steps[f"sample_{s}"], seed=s, summary=samples[s]) for s in seeds],
                summary=dict(acc=acc, novelty=nov, recon_rel_err=_mean_std([samples[s]["recon_rel_err"] for s in seeds]),
                             prompt_acc=_mean_std([np.mean(samples[s]["prompt_acc"]) for s in seeds]))), res/"sample.json")
    shutil.copy(root/f"run_{seeds[0]}"/"sample"/"curves.png", res/"curves.png")
    shutil.copy(root/f"run_{seeds[0]}"/"probe"/"pca.png", res/"pca.png")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/fmnist", help="working folder (zoo, runs, logs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining / split / sampling seeds")
    ap.add_argument("--results", default=str(Path(__file__).parents[1]/"nbs"/"tutorials"/"fashion_mnist_results"))
    ap.add_argument("--quick", action="store_true", help="a smoke run on digits at toy sizes (checks this script, not SANE)")
    a = ap.parse_args()
    if a.quick: globals().update(QUICK)
    root, res = Path(a.root), Path(a.results)
    root.mkdir(parents=True, exist_ok=True); res.mkdir(parents=True, exist_ok=True)
    run_all(root, a.seeds)
    steps, mach = load_json(root/"steps.json"), machine()
    collect_zoo(root, res, steps["zoo"], mach)
    collect_runs(root, res, steps, a.seeds, mach)
    print(f"results in {res}")

if __name__ == "__main__": main()
