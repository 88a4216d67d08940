"""Guarded access to mamba-ssm's CUDA selective-scan kernel.

``import mamba_ssm`` can fail for many reasons (no CUDA build, Triton missing, ABI mismatch) and, in recent
releases, can succeed while the compiled kernel is absent. The probe below therefore imports the interface
module, checks that the compiled extension is present, and runs one small forward and backward on the device
the tensors are on, compared with the sequential reference. It keeps the real reason of any failure instead of
hiding it (the official code's bare ``except`` turned every failure into ``NameError: selective_scan_fn``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType

import torch

from .reference import selective_scan_reference

__all__ = ["MAMBA_INSTALL_HINT", "mamba_scan_fn", "mamba_status", "verify_kernel"]

MAMBA_INSTALL_HINT = (
    "Build mamba-ssm's CUDA kernel on a machine with nvcc and a CUDA build of torch: in a checkout of this "
    "repository `bash scripts/install_gpu.sh`; elsewhere `pip install packaging ninja wheel setuptools einops "
    "transformers && MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps --no-cache-dir "
    "--force-reinstall mamba-ssm==2.3.2.post1` (docs/gpu.md)."
)
"""How to build mamba-ssm's CUDA kernel; part of every error and warning about it."""

_PROBE_TOL = 1e-3  # fp32 kernel against the fp32 sequential reference on a 64-step scan


@functools.lru_cache(maxsize=1)
def _interface() -> tuple[ModuleType | None, str]:
    """mamba-ssm's ``selective_scan_interface`` module with its compiled extension, or ``(None, why not)``."""
    try:
        from mamba_ssm.ops import selective_scan_interface as ssi
    except Exception as err:  # any import failure is a reason to fall back; the reason is reported
        return None, f"mamba_ssm could not be imported ({type(err).__name__}: {err})"
    if getattr(ssi, "selective_scan_cuda", None) is None:
        return None, "mamba_ssm is installed without its compiled selective_scan_cuda extension"
    return ssi, "mamba_ssm imported with its compiled selective_scan_cuda extension"


def verify_kernel(scan_fn: Callable, device: torch.device) -> tuple[bool, str]:
    """One forward and backward of ``scan_fn`` on ``device``, as SS2D calls it, against the reference.

    The call has the network's layout: u, delta ``(1, 8, 64)`` float32, A ``(8, 16)``, grouped B and C
    ``(1, 4, 16, 64)``, D and delta_bias ``(8,)``, softplus on. Runs with gradients on and autocast off, whatever
    the caller's mode (the first scan may come under ``no_grad``).

    Args:
        scan_fn: a function with mamba-ssm's ``selective_scan_fn`` signature.
        device: the device to test it on.

    Returns:
        ``(ok, reason)``: a kernel built for another architecture, a failing backward or a wrong result (relative
        error of the output or a gradient 1e-3 or more) all give ``ok=False`` with the reason.
    """
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        return _verify(scan_fn, device)


def _verify(scan_fn: Callable, device: torch.device) -> tuple[bool, str]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device).requires_grad_()

    args = (
        rand(1, 8, 64),
        rand(1, 8, 64, scale=0.5, shift=-1.0),
        (-torch.exp(torch.randn(8, 16, generator=gen) * 0.5)).to(device).requires_grad_(),
        rand(1, 4, 16, 64),
        rand(1, 4, 16, 64),
        rand(8),
        None,
        rand(8, scale=0.1),
    )
    leaves = [a for a in args if a is not None]
    try:
        out = scan_fn(*args, delta_softplus=True)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        ref = selective_scan_reference(*args, delta_softplus=True)
        grads_ref = torch.autograd.grad(ref.square().sum(), leaves)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as err:  # a kernel built for another architecture fails here, not at import
        return False, f"mamba_ssm's kernel failed a forward and backward test call ({type(err).__name__}: {err})"
    gradients = zip(grads, grads_ref, strict=True)
    pairs = [("output", out, ref)] + [(f"gradient {i}", g, r) for i, (g, r) in enumerate(gradients)]
    for name, got, want in pairs:
        got, want = got.detach().double(), want.detach().double()
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
        if not err < _PROBE_TOL:  # also false for NaN
            return False, f"mamba_ssm's kernel gave a wrong {name} in its test call (relative error {err:.2e})"
    return True, f"mamba_ssm CUDA kernel works on {device} (forward and backward checked)"


def _normalise(device: torch.device | None) -> torch.device:
    """``cuda`` without an index means the current CUDA device; ``None`` means that device too."""
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


@functools.lru_cache(maxsize=None)
def _probe(device: torch.device) -> tuple[Callable | None, str]:
    ssi, reason = _interface()
    if ssi is None:
        return None, reason
    if device.type != "cuda":
        return None, f"mamba_ssm's kernel needs CUDA tensors, got tensors on {device}"
    if not torch.cuda.is_available():
        return None, "CUDA is not available to torch"
    ok, reason = verify_kernel(ssi.selective_scan_fn, device)
    return (ssi.selective_scan_fn if ok else None), reason


def mamba_status(device: torch.device | None = None) -> tuple[bool, str]:
    """Whether mamba-ssm's CUDA kernel runs (forward and backward) on ``device``; probed once per device.

    Args:
        device: the device of the tensors; None or ``"cuda"`` without an index means the current CUDA device.

    Returns:
        ``(usable, reason)``.
    """
    fn, reason = _probe(_normalise(device))
    return fn is not None, reason


def mamba_scan_fn(device: torch.device | None = None) -> Callable:
    """mamba-ssm's ``selective_scan_fn`` for tensors on ``device``.

    Args:
        device: the device of the tensors; None or ``"cuda"`` without an index means the current CUDA device.

    Returns:
        ``selective_scan_fn``, probed on ``device``.

    Raises:
        RuntimeError: with the reason and the install command (:data:`MAMBA_INSTALL_HINT`) where it cannot run.
    """
    fn, reason = _probe(_normalise(device))
    if fn is None:
        raise RuntimeError(f"scan backend 'mamba' is unavailable: {reason}. {MAMBA_INSTALL_HINT}")
    return fn
