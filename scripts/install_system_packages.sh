#!/usr/bin/env bash
# System packages for the DICOM tests: Orthanc with its DICOMweb plugin (tests/dicom starts its own instance on
# free 127.0.0.1 ports), dicom3tools (dciodvfy checks the DICOM SEG and SR objects), dcmtk (echoscu / storescu try the
# listener) and Node.js with npm (tests/dicom/js: dcmjs, what OHIF's SEG loading builds on, decodes every SEG).
# Debian/Ubuntu, via apt. Node.js and npm come from Debian unless a node and an npm are already on PATH (e.g.
# NodeSource's nodejs, which bundles npm and conflicts with Debian's npm package).
# Usage: bash scripts/install_system_packages.sh          (as root)
#        bash scripts/install_system_packages.sh --sudo   (as another user, through sudo)
set -euo pipefail
PKGS=(orthanc orthanc-dicomweb dicom3tools dcmtk)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PKGS+=(nodejs npm)
fi
if dpkg -s "${PKGS[@]}" >/dev/null 2>&1; then
  echo "system packages already installed: ${PKGS[*]}"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if [ "${1:-}" = "--sudo" ] && command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    echo "cannot install ${PKGS[*]}: not root. Run: sudo bash scripts/install_system_packages.sh" >&2
    exit 2
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "cannot install ${PKGS[*]}: no apt-get here. Install Orthanc (with its DICOMweb plugin) and dicom3tools" \
       "with this system's package manager; the Orthanc tests in tests/dicom need the Orthanc binary on PATH." >&2
  exit 2
fi
# policy-rc.d keeps the Orthanc service from starting during the install (the tests start their own instance)
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PKGS[@]}"
