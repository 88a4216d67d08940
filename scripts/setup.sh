#!/usr/bin/env bash
# One-step setup on a fresh machine: a virtual environment in .venv with everything the package, the bundle
# and the tests need (CPU build of torch; mamba-ssm installed as pure Python, its CUDA kernel is a GPU extra).
# Run as root with apt, it also installs the system packages of the DICOM tests (Orthanc, dicom3tools, dcmtk, Node.js
# and npm); otherwise it says how to install them. With npm, it installs tests/dicom/js (dcmjs, pinned by its
# package-lock.json) with `npm ci`.
# Usage: bash scripts/setup.sh            (VENV=path to choose another location)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  bash scripts/install_system_packages.sh
elif ! dpkg -s orthanc orthanc-dicomweb dicom3tools dcmtk >/dev/null 2>&1 || ! command -v node >/dev/null \
     || ! command -v npm >/dev/null; then
  echo "NOTE: Orthanc, its DICOMweb plugin, dicom3tools, dcmtk, Node.js and npm are not all installed and this setup" \
       "cannot install them (it needs root and apt). The tests in tests/dicom that use them fail until you run:" \
       "sudo bash scripts/install_system_packages.sh" >&2
fi
# dcmjs for the web-viewer check of the SEGs (tests/dicom/js; exact versions from its package-lock.json)
if command -v npm >/dev/null; then
  npm ci --prefix tests/dicom/js --ignore-scripts --no-audit --no-fund
fi
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -r requirements.txt
# mamba-ssm is an sdist: without CUDA it installs only as pure Python with both flags below. causal-conv1d is not
# installed: VM-UNetV2 has no causal convolution (mamba-ssm imports it optionally).
# Nothing in them imports on a CPU machine; the package probes them and falls back to its own scan.
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
  "$VENV/bin/pip" install -q --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
# Build the compiled CPU selective scan once (cached in ~/.cache/vmunetv2_monai/ext). Where it cannot build, this
# prints the reason and the package uses its pure-PyTorch scan; setup does not fail.
"$VENV/bin/python" -c "from vmunetv2_monai.ops.selective_scan.cpu import cpu_status; print('cpu scan kernel:', cpu_status())"
"$VENV/bin/python" -c "import vmunetv2_monai, monai; print('vmunetv2_monai', vmunetv2_monai.__version__, 'monai', monai.__version__)"
