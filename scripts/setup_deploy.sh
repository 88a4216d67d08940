#!/usr/bin/env bash
# One-step setup of the MONAI Deploy environment (separate from .venv; see docs/deploy.md):
# creates .venv-deploy with monai-deploy-app-sdk 4.0.0 and the pins in requirements-deploy.txt, then this package
# (no deps). Usage: bash scripts/setup_deploy.sh        (DEPLOY_VENV=path to choose another location, PYTHON=python3.x)
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOY_VENV="${DEPLOY_VENV:-.venv-deploy}"
PY="${PYTHON:-python3}"
"$PY" -m venv "$DEPLOY_VENV"
"$DEPLOY_VENV/bin/pip" install -q -r requirements-deploy.txt
"$DEPLOY_VENV/bin/pip" install -q --no-deps monai-deploy-app-sdk==4.0.0
"$DEPLOY_VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
"$DEPLOY_VENV/bin/python" -c "import monai.deploy, monai.deploy.operators.monai_bundle_inference_operator, vmunetv2_monai; \
print('monai-deploy-app-sdk', monai.deploy.__version__)"
