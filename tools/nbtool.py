"""Authoring helper: convert between notebooks and 'percent' scripts, and run a notebook in place.

The notebooks in `nbs/` are the source of truth. This tool only makes writing and re-running them easier:

    python tools/nbtool.py py2nb  nbs/api/03_tokenize.py     # -> nbs/api/03_tokenize.ipynb (the .py can then be deleted)
    python tools/nbtool.py nb2py  nbs/api/03_tokenize.ipynb  # -> nbs/api/03_tokenize.py, to edit as text
    python tools/nbtool.py run    nbs/api/03_tokenize.ipynb  # execute every cell and store the outputs in the notebook

Percent format: a line `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines start with `# `.
"""
import hashlib, json, sys
from pathlib import Path

_KERNEL = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}

def _cell(kind, lines):
    while lines and not lines[-1].strip(): lines.pop()
    while lines and not lines[0].strip(): lines.pop(0)
    if kind == "markdown": lines = [l[2:] if l.startswith("# ") else l.lstrip("#") for l in lines]
    src = [l + "\n" for l in lines]
    if src: src[-1] = src[-1].rstrip("\n")
    c = {"cell_type": kind, "metadata": {}, "source": src}
    if kind == "code": c.update(execution_count=None, outputs=[])
    return c

def py2nb(path):
    "Percent script -> notebook beside it"
    path = Path(path)
    cells, kind, buf = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            if kind: cells.append(_cell(kind, buf))
            kind, buf = ("markdown" if "[markdown]" in line else "code"), []
        else: buf.append(line)
    if kind: cells.append(_cell(kind, buf))
    for i, c in enumerate(cells): c["id"] = hashlib.sha1(f"{path.stem}-{i}".encode()).hexdigest()[:8]  # stable ids
    nb = {"cells": cells, "metadata": _KERNEL, "nbformat": 4, "nbformat_minor": 5}
    out = path.with_suffix(".ipynb")
    out.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return out

def nb2py(path):
    "Notebook -> percent script beside it"
    path = Path(path)
    nb = json.loads(path.read_text())
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(("# " + l) if l else "#" for l in src.splitlines()))
        else: parts.append("# %%\n" + src)
    out = path.with_suffix(".py")
    out.write_text("\n\n".join(parts) + "\n")
    return out

def run(path):
    "Execute a notebook top to bottom (working directory = its folder) and save its outputs"
    import os
    from execnb.shell import CaptureShell
    from execnb.nbio import read_nb, write_nb
    path = Path(path).resolve()
    nb = read_nb(path)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sh = CaptureShell()
        sh.run_all(nb, exc_stop=True)
    finally: os.chdir(cwd)
    write_nb(nb, path)
    return path

if __name__ == "__main__":
    cmd, *files = sys.argv[1:]
    for f in files: print({"py2nb": py2nb, "nb2py": nb2py, "run": run}[cmd](f))
