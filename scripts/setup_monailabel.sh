#!/usr/bin/env bash
# One-step setup of the MONAI Label environment (separate from .venv; see docs/label.md):
# creates .venv-label with monailabel 0.8.5 and the pins in requirements-label.txt, then this package (no deps).
# Usage: bash scripts/setup_monailabel.sh        (LABEL_VENV=path to choose another location, PYTHON=python3.x)
set -euo pipefail
cd "$(dirname "$0")/.."
LABEL_VENV="${LABEL_VENV:-.venv-label}"
PY="${PYTHON:-python3}"
"$PY" -m venv "$LABEL_VENV"
"$LABEL_VENV/bin/pip" install -q -r requirements-label.txt
# --no-deps: everything monailabel needs at run time is in requirements-label.txt, except sam2 (not used here).
"$LABEL_VENV/bin/pip" install -q --no-deps monailabel==0.8.5
"$LABEL_VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
"$LABEL_VENV/bin/python" -c "import monailabel, monai, numpy, torch, vmunetv2_monai.label.app, vmunetv2_monai.label.server; \
print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__, \
'numpy', numpy.__version__)"
