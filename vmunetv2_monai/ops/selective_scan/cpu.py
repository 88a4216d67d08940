"""Compiled C++ selective scan for CPUs (the ``cpu`` backend): AVX2+FMA (AVX-512 in the fused op), threads by channel.

The extension (``csrc/scan_cpu.cpp``; ``csrc/cross_scan_cpu.cpp``, the fused SS2D op of ``cross_cpu.py``;
``csrc/transpose_cpu.cpp``, the threaded transposing copy of ``ops/linear_cpu.py``'s weight gradient) is built
with ``torch.utils.cpp_extension.load`` the first time it is needed (``scripts/setup.sh`` triggers that once) and
cached in ``$VMUNETV2_EXT_DIR`` (default ``~/.cache/vmunetv2_monai/ext``), one build per torch version, CPU
capability and checkout. Where it cannot be built or loaded
(no compiler, no ninja, ``VMUNETV2_CPU_SCAN=0``), :func:`cpu_status` reports why and the dispatcher uses the
pure-PyTorch ``torch`` backend instead.

The kernel computes in float32 for float32/half inputs and needs d_state N in {8, 16, 24, 32}; float64 inputs
and other N are handed to the ``torch`` backend (see :func:`cpu_unsupported_reason`). Step-size bias and
softplus, the recurrence, the C readout and the D skip run inside the kernel; the optional z gate is a PyTorch
op after it. Backward keeps only the state at every 64th step (saved by forward) and recomputes the
rest chunk by chunk, so its extra memory is about one copy of u.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch.utils import cpp_extension

from .shapes import check_scan_inputs, skip_and_gate

__all__ = ["cpu_status", "cpu_unsupported_reason", "selective_scan_cpu"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "scan_cpu.cpp"
# the bound kernels and their files (+ headers)
_SOURCES = [_SOURCE, *(_SOURCE.with_name(f"{name}_cpu.cpp") for name in ("cross_scan", "gated_norm", "transpose"))]
_SUPPORTED_N = (8, 16, 24, 32)


def _build_dir(capability: str, source: Path = _SOURCE) -> Path:
    """One build folder per torch version, CPU capability and source file location: torch's build records the
    source path, so two checkouts sharing a folder would rebuild each other's kernel at every start."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmunetv2_monai" / "ext"
    root = Path(os.environ.get("VMUNETV2_EXT_DIR", default))
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return root / f"torch-{torch.__version__}-{capability}-{where}"


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str]:
    """Build (first time) and import the kernel; ``(module, reason)`` or ``(None, why not)``."""
    if os.environ.get("VMUNETV2_CPU_SCAN", "1") == "0":
        return None, "disabled by VMUNETV2_CPU_SCAN=0"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++17"]
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if capability == "AVX512":  # the fused kernel then runs 16 channels to a vector (csrc/simd.h)
        flags += ["-mavx512f", "-mavx512dq"]
    # at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it runs serially. Compiled with it (and
    # not linked to a libgomp of its own), the kernel's GOMP calls bind to the runtime torch has loaded, so it follows
    # torch.set_num_threads like torch's own ops. A compiler without OpenMP still gets the single-threaded build.
    attempts = [flags + ["-fopenmp"], flags] if _openmp_threads() else [flags]
    build_dir = _build_dir(capability)
    logger.info("loading the cpu selective-scan kernel (built once into %s)", build_dir)
    for attempt in attempts:
        try:
            build_dir.mkdir(parents=True, exist_ok=True)
            module = cpp_extension.load(
                name="vmunetv2_scan_cpu",
                sources=[str(path) for path in _SOURCES],
                extra_cflags=attempt,
                build_directory=str(build_dir),
                verbose=False,
            )
            break
        except Exception as err:  # compiler, ninja or linker failure: a reason to fall back, and it is reported
            reason = f"the C++ kernel could not be built or loaded ({type(err).__name__}: {str(err)[:500]})"
            if attempt is not attempts[-1]:
                logger.warning("%s with OpenMP; building it single-threaded", reason)
    else:
        return None, reason
    threads = "torch's intra-op threads" if "-fopenmp" in attempt else "1 thread: built without OpenMP"
    return module, f"compiled C++ kernel ({module.simd_name()}, {threads})"


def _openmp_threads() -> bool:
    """Whether to build the kernel with OpenMP: torch has an OpenMP runtime to share, on Linux (GCC-style flags)."""
    return torch.backends.openmp.is_available() and sys.platform.startswith("linux")


def cpu_status() -> tuple[bool, str]:
    """Whether the compiled CPU kernel can run here, and why (or why not). Builds it on first call.

    Returns:
        ``(usable, reason)``.
    """
    module, reason = _load()
    return module is not None, reason


def cpu_unsupported_reason(u: torch.Tensor, A: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs (not on the CPU, float64, unsupported N), or None when it can.

    Args:
        u: the scan input ``(batch, dim, L)`` (its device and dtype are checked).
        A: the state matrix ``(dim, N)`` (its N is checked).

    Returns:
        A short reason, or None.
    """
    if u.device.type != "cpu":
        return f"tensors on {u.device}"
    if u.dtype == torch.float64:
        return "float64 input (the kernel is float32 only)"
    if A.shape[-1] not in _SUPPORTED_N:
        return f"d_state {A.shape[-1]} (the kernel supports {_SUPPORTED_N})"
    return None


class _CpuScan(torch.autograd.Function):
    """``y = scan(u, softplus(delta + bias), A, B, C) + D u`` with the compiled kernel.

    Layout: u, delta, y ``(batch, G, P, L)``; A ``(G, P, N)``; Bm, Cm time-major ``(batch, G, L, N)``;
    D, bias ``(G, P)`` or empty tensors.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, bias, softplus: bool, save: bool):  # type: ignore[override]
        module, _ = _load()
        y, hsave = module.forward(u, delta, A, Bm, Cm, D, bias, softplus, save)
        if save:
            ctx.softplus = softplus
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, bias, hsave)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        module, _ = _load()
        u, delta, A, Bm, Cm, D, bias, hsave = ctx.saved_tensors
        du, ddelta, dA, dBm, dCm, dD, dbias = module.backward(
            u, delta, A, Bm, Cm, D, bias, ctx.softplus, hsave, dy.contiguous()
        )
        return (
            du,
            ddelta,
            dA,
            dBm,
            dCm,
            dD if D.numel() else None,
            dbias if bias.numel() else None,
            None,
            None,
        )


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract on the compiled CPU kernel.

    The caller checks :func:`cpu_status` and :func:`cpu_unsupported_reason` first (the dispatcher does).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus: as for
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan`, where the shapes are listed.

    Returns:
        ``(batch, dim, L)`` in u's dtype (computed in float32; the ``z`` gate is applied after the kernel).

    Raises:
        ValueError: for arguments of the wrong shape.
    """
    s = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    g, n = s.groups, A.shape[1]
    f32 = torch.float32

    def per_channel(v: torch.Tensor | None) -> torch.Tensor:
        return v.to(f32).reshape(g, dim // g).contiguous() if v is not None else u.new_empty(0, dtype=f32)

    args = (
        u.to(f32).reshape(batch, g, dim // g, length).contiguous(),
        delta.to(f32).reshape(batch, g, dim // g, length).contiguous(),
        A.to(f32).reshape(g, dim // g, n).contiguous(),
        s.B.to(f32).transpose(-1, -2).contiguous(),
        s.C.to(f32).transpose(-1, -2).contiguous(),
        per_channel(D),
        per_channel(delta_bias),
    )
    save = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    y = _CpuScan.apply(*args, delta_softplus, save).reshape(batch, dim, length)
    return skip_and_gate(y, u, None, z)  # D is applied inside the kernel
