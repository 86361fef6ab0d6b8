"""What a `pip install` of the source archive gets: every file setup.py needs, every import declared, nothing cited
that the project does not contain."""
import ast, configparser, json, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST = {"sklearn": "scikit-learn"}


def _requirements():
    "The requirements settings.ini declares: the package's, and its optional extras' (Ray: imported only where it is used)"
    cfg = configparser.ConfigParser(); cfg.read(ROOT/"settings.ini")
    reqs = cfg["DEFAULT"]["requirements"].split() + cfg["DEFAULT"].get("ray_requirements", "").split()
    return {re.split(r"[<>=!~ ]", r)[0].lower() for r in reqs}


def test_every_third_party_import_is_declared():
    "An import the package makes must be a declared requirement (a transitive one can vanish with a release)"
    mods = set()
    for f in (ROOT/"sane_nb").rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import): mods |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module: mods.add(n.module.split(".")[0])
    third = {DIST.get(m, m).lower() for m in mods - set(sys.stdlib_module_names) - {"sane_nb"}}
    assert third <= _requirements(), f"imported but not declared in settings.ini: {sorted(third - _requirements())}"


def test_sdist_installs_and_imports(tmp_path):
    """The source archive holds settings.ini, LICENSE and CITATION.cff, installs (without its dependencies, which are
    already here) and imports every module"""
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path/"dist")], cwd=ROOT, check=True,
                   capture_output=True)
    sdist, = (tmp_path/"dist").glob("*.tar.gz")
    import tarfile
    names = {Path(n).name for n in tarfile.open(sdist).getnames()}
    assert {"settings.ini", "LICENSE", "CITATION.cff", "setup.py"} <= names, sorted(names)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(tmp_path/"site"), str(sdist)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    pkg = tmp_path/"site"/"sane_nb"
    mods = sorted(".".join(p.relative_to(pkg).with_suffix("").parts) for p in pkg.rglob("*.py") if p.stem != "__init__")
    assert "bench.probe" in mods and "probe" in mods, mods
    code = "import importlib, sane_nb; [importlib.import_module('sane_nb.' + m) for m in %r]; print(sane_nb.__file__)" % mods
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path/"site"), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith(str(tmp_path/"site")), r.stdout


def test_pages_cite_only_what_the_project_holds():
    "Notebooks and the README must not point readers at documents (README-style names) outside the repository"
    bad = []
    for f in [*ROOT.glob("nbs/**/*.ipynb"), ROOT/"README.md"]:
        text = f.read_text() if f.suffix == ".md" else "\n".join("".join(c["source"]) for c in json.loads(f.read_text())["cells"])
        for name in set(re.findall(r"\b([A-Z][A-Z0-9_-]+\.md)\b", text)):
            if not any(ROOT.glob(f"**/{name}")): bad.append(f"{f.relative_to(ROOT)} cites {name}")
    assert not bad, bad


def test_spectral_features_match_weightwatcher():
    """Where WeightWatcher is installed (an optional dev dependency): the same stable rank and alpha, its spectral norm
    squared, convolutions in its per-position slices, and a failed fit (nan / -1) for a rank-1 layer"""
    ww = pytest.importorskip("weightwatcher")
    import logging, math
    import torch
    from sane_nb.analysis import spectral_features
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(8, 24, 3), torch.nn.Flatten(), torch.nn.Linear(60, 120), torch.nn.Linear(120, 30))
    with torch.no_grad(): m[3].weight.copy_(torch.randn(30, 1) @ torch.randn(1, 120))
    d = ww.WeightWatcher(model=m).analyze(conv2d_norm=False)   # by default it scales conv slices by sqrt(1/2)
    ours = spectral_features(m.state_dict(), conv="slices")
    assert len(d) == len(ours), (len(d), len(ours))
    for (_, w), o in zip(d.iterrows(), ours):
        if w["alpha"] == -1:                                  # WeightWatcher's failed fit
            assert math.isnan(o["alpha"]); continue
        assert math.isclose(o["alpha"], w["alpha"], rel_tol=1e-6), (o, dict(w))
        assert math.isclose(o["stable_rank"], w["stable_rank"], rel_tol=1e-6)
        assert math.isclose(o["spectral_norm"]**2, w["spectral_norm"], rel_tol=1e-6)
    assert math.isnan(ours[2]["alpha"])


def test_notebooks_stay_small():
    "Figures are small PNGs: no notebook reaches 1 MB"
    big = [f"{f.relative_to(ROOT)}: {f.stat().st_size/1e6:.2f} MB" for f in ROOT.glob("nbs/**/*.ipynb") if f.stat().st_size >= 1e6]
    assert not big, big
