#!/usr/bin/env bash
# Build mamba-ssm's CUDA selective-scan kernel (selective_scan_cuda) against the torch of $PYTHON, then check that
# the package's `mamba` backend works on the GPU (forward and backward); exit 1 with the reason when it does not.
# Works on a fresh GPU machine and after scripts/setup.sh (whose pure-Python mamba-ssm it replaces).
#
# Usage: bash scripts/install_gpu.sh
# Environment:
#   PYTHON       python with a CUDA build of torch (default: .venv/bin/python if present, else python3)
#   MAMBA_SDIST  a local mamba_ssm-2.3.2.post1.tar.gz (offline machines); default: downloaded from PyPI
#   CUDA_ARCH    compute capability to build for, e.g. 90 (H100/H200) or "80;90"; default: the visible GPU's.
#                mamba-ssm's setup.py passes its own -gencode list for ~9 architectures (TORCH_CUDA_ARCH_LIST does
#                not shorten it), so this script rewrites that list in the unpacked sdist.
#   MAX_JOBS     parallel compile jobs (default: number of cores)
# causal-conv1d is not built: VM-UNetV2 does not use it.
set -euo pipefail
cd "$(dirname "$0")/.."
MAMBA_VERSION=2.3.2.post1
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
say() { echo "install_gpu: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# 1. torch must be a CUDA build that sees a GPU, and nvcc must match its CUDA major version.
"$PYTHON" - <<'EOF' || die "torch in $PYTHON cannot build the kernel (see above)"
import sys, torch
if not torch.version.cuda:
    sys.exit(f"torch {torch.__version__} is a CPU build; install a CUDA build of torch first")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: no GPU or driver visible")
EOF
NVCC="${CUDA_HOME:+$CUDA_HOME/bin/}nvcc"
command -v "$NVCC" >/dev/null || die "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
say "$("$NVCC" --version | tail -n 2 | head -n 1); $("$PYTHON" -c 'import torch; print("torch", torch.__version__)')"

# 2. Build prerequisites (--no-build-isolation uses the environment's own) and the runtime imports of mamba_ssm.
missing=$("$PYTHON" - <<'EOF'
import importlib.util, shutil
need = {"packaging": "packaging", "wheel": "wheel", "setuptools": "setuptools", "einops": "einops",
        "transformers": "transformers", "huggingface_hub": "huggingface_hub", "triton": "triton"}
names = [pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None]
if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
    names.append("ninja")
print(" ".join(names))
EOF
)
if [ -n "$missing" ]; then
  say "installing build/runtime prerequisites: $missing"
  "$PYTHON" -m pip install $missing || die "could not install: $missing (offline? carry them as wheels)"
fi

# 3. The sdist, unpacked into a temporary folder (never a cached wheel: that is the pure-Python build of setup.sh).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -n "${MAMBA_SDIST:-}" ]; then
  [ -f "$MAMBA_SDIST" ] || die "MAMBA_SDIST=$MAMBA_SDIST is not a file"
  cp "$MAMBA_SDIST" "$WORK/mamba_ssm-$MAMBA_VERSION.tar.gz"
else
  MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE "$PYTHON" -m pip download -q --no-deps --no-build-isolation \
    --no-binary :all: --no-cache-dir -d "$WORK" "mamba-ssm==$MAMBA_VERSION" || die "could not download the sdist"
fi
tar -xzf "$WORK/mamba_ssm-$MAMBA_VERSION.tar.gz" -C "$WORK"
SRC="$WORK/mamba_ssm-$MAMBA_VERSION"
[ -f "$SRC/setup.py" ] || die "the sdist is not mamba_ssm-$MAMBA_VERSION"

# 4. Build only for this GPU's architecture: replace setup.py's -gencode list (cc_flag) just before it is used.
ARCH="${CUDA_ARCH:-$("$PYTHON" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())')}"
"$PYTHON" - "$SRC/setup.py" "$ARCH" <<'EOF' || die "could not restrict the build to sm_$ARCH"
import sys
path, archs = sys.argv[1], [a for a in sys.argv[2].replace(",", ";").split(";") if a]
text = open(path).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if text.count(anchor) != 1 or text.count("cc_flag.append(\"arch=compute_") < 1:
    sys.exit("setup.py does not have the expected layout; refusing to patch it")
flags = [f for a in archs for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")]
text = text.replace(anchor, f"    cc_flag = {flags!r}  # install_gpu.sh: only this GPU's architecture\n" + anchor)
open(path, "w").write(text)
EOF
say "building selective_scan_cuda for sm_$ARCH with MAX_JOBS=${MAX_JOBS:-$(nproc)} (several minutes)"
MAMBA_FORCE_BUILD=TRUE MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PYTHON" -m pip install --no-build-isolation --no-deps --no-cache-dir --force-reinstall "$SRC" \
  || die "the mamba-ssm build failed (see the compiler output above)"

# 5. The package must now report the mamba backend as working (forward and backward on the GPU).
"$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . || die "could not install vmunetv2_monai"
"$PYTHON" - <<'EOF' || die "the mamba backend does not work after the build (reason above)"
import sys
import vmunetv2_monai
ok, reason = vmunetv2_monai.available_backends()["mamba"]
print(f"install_gpu: mamba backend: {ok} ({reason})", file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
