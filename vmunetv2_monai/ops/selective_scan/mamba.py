"""Guarded access to mamba-ssm's CUDA selective-scan kernel.

``import mamba_ssm`` can fail for many reasons (no CUDA build, Triton missing, ABI mismatch) and, in recent
releases, can succeed while the compiled kernel is absent. The probe below therefore imports the interface
module, checks that the compiled extension is present, and runs one tiny kernel call on a CUDA tensor. It keeps
the real reason of any failure instead of hiding it (the official code's bare ``except`` turned every failure
into ``NameError: selective_scan_fn``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["MAMBA_INSTALL_HINT", "mamba_status", "mamba_scan_fn"]

MAMBA_INSTALL_HINT = (
    "Install the CUDA kernels on a machine with nvcc and a CUDA build of torch: "
    "MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0 "
    "(see README, 'GPU install')."
)


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Callable | None, str]:
    try:
        from mamba_ssm.ops import selective_scan_interface as ssi
    except Exception as err:  # any import failure is a reason to fall back; the reason is reported
        return None, f"mamba_ssm could not be imported ({type(err).__name__}: {err})"
    if getattr(ssi, "selective_scan_cuda", None) is None:
        return None, "mamba_ssm is installed without its compiled selective_scan_cuda extension"
    if not torch.cuda.is_available():
        return None, "CUDA is not available to torch"
    try:
        dev = torch.device("cuda")
        x = torch.ones(1, 2, 4, device=dev)
        ssi.selective_scan_fn(x, x, -torch.ones(2, 1, device=dev), x[:, :1], x[:, :1], delta_softplus=True)
        torch.cuda.synchronize(dev)
    except Exception as err:  # a kernel built for another architecture fails here, not at import
        return None, f"mamba_ssm's kernel failed a test call ({type(err).__name__}: {err})"
    return ssi.selective_scan_fn, "mamba_ssm CUDA kernel works"


def mamba_status() -> tuple[bool, str]:
    """Whether mamba-ssm's CUDA kernel can run here, and why (or why not)."""
    fn, reason = _probe()
    return fn is not None, reason


def mamba_scan_fn() -> Callable:
    """mamba-ssm's ``selective_scan_fn``; raises ``RuntimeError`` with the reason and install hint if unusable."""
    fn, reason = _probe()
    if fn is None:
        raise RuntimeError(f"scan backend 'mamba' is unavailable: {reason}. {MAMBA_INSTALL_HINT}")
    return fn
