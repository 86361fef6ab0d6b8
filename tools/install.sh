#!/usr/bin/env bash
# Install sane_nb with its development tools into ./.venv (made if missing). Safe to run again.
# PyTorch is installed first, and only if the environment has none, so a CUDA build you put there is kept:
# on machines whose pip has the CPU wheel of torch 2.13.0 at hand, that is what it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -c "import sane_nb, torch; print('sane_nb', sane_nb.__version__, '| torch', torch.__version__)"
