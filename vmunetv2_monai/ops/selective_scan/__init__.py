"""Selective scan (the S6 recurrence of Mamba) with interchangeable backends.

Backends, all with mamba-ssm's ``selective_scan_fn`` contract:

============= ================================================================================
``mamba``     mamba-ssm's CUDA kernel (GPU only; needs the compiled ``selective_scan_cuda``)
``cpu_fused`` in SS2D: cross-scan, step-size projection, scan and cross-merge as one compiled C++ op
              (:mod:`.cross_cpu`, float32 CPU tensors, forward and backward; AVX-512 where torch reports it),
              then ``out_norm`` and the gate as another (:mod:`.gated_norm_cpu`); a plain scan call runs as ``cpu``
``cpu``       our compiled C++ kernel (AVX2+FMA, float32, CPU tensors), built once on first use; in SS2D the
              cross-scan and merge stay PyTorch ops around it
``torch``     our blocked PyTorch implementation with a hand-written backward (any device)
``reference`` plain sequential loop, the test oracle (slow)
``auto``      ``mamba`` when its kernel works and the tensors are on CUDA; ``cpu_fused`` on CPU tensors when
              the C++ kernel builds (measured faster than ``cpu``: docs/performance.md); otherwise ``torch``
============= ================================================================================

``cpu`` and ``cpu_fused`` hand inputs they do not take (float64, d_state not in 8/16/24/32) to ``torch``, and say
so in the log.
On CUDA tensors, ``auto`` falling back from ``mamba`` logs a WARNING with the reason and the install command. Our
backends compute in float32 (float64 stays float64) also under autocast: it is switched off around them.

The environment variable ``VMUNETV2_SCAN_BACKEND`` sets the backend used by ``"auto"`` (read once, here; empty
means ``auto``).
"""

from __future__ import annotations

import logging
import os

import torch

from .blocked import selective_scan_blocked
from .cpu import cpu_status, cpu_unsupported_reason, selective_scan_cpu
from .mamba import MAMBA_INSTALL_HINT, mamba_scan_fn, mamba_status
from .reference import selective_scan_reference
from .scripted import selective_scan_scripted

__all__ = ["SCAN_BACKENDS", "available_backends", "resolve_backend", "selective_scan"]

logger = logging.getLogger(__name__)

SCAN_BACKENDS = ("auto", "mamba", "cpu_fused", "cpu", "torch", "reference")
"""Every name the ``backend`` / ``scan_backend`` arguments accept."""
_ENV_BACKEND = os.environ.get("VMUNETV2_SCAN_BACKEND") or "auto"  # set but empty: auto
_logged: set[tuple[str, str]] = set()


def available_backends() -> dict[str, tuple[bool, str]]:
    """Which concrete backends can run here, and why (or why not); builds the ``cpu`` kernel on first call.

    ``mamba`` is probed with a forward and backward on the current CUDA device.

    Returns:
        ``{name: (usable_here, reason)}`` for ``"mamba"``, ``"cpu"``, ``"torch"`` and ``"reference"``.
    """
    return {
        "mamba": mamba_status(),
        "cpu": cpu_status(),
        "torch": (True, "pure PyTorch, any device"),
        "reference": (True, "pure PyTorch sequential loop (slow, for tests)"),
    }


def _log_once(backend: str, reason: str, level: int = logging.INFO) -> None:
    if (backend, reason) not in _logged:
        _logged.add((backend, reason))
        logger.log(level, "selective scan backend: %s (%s)", backend, reason)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that ``backend`` means for tensors on ``device`` (logged once per choice and reason).

    Args:
        backend: one of :data:`SCAN_BACKENDS`; ``"auto"`` is replaced by ``VMUNETV2_SCAN_BACKEND`` when that is set.
        device: the device of the scan's tensors.

    Returns:
        ``"mamba"``, ``"cpu_fused"``, ``"cpu"``, ``"torch"`` or ``"reference"``.

    Raises:
        ValueError: for an unknown name (argument or environment variable).
        RuntimeError: with the reason when ``"mamba"``, ``"cpu_fused"`` or ``"cpu"`` is forced where it cannot run.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {backend!r}.")
    if backend == "auto" and _ENV_BACKEND != "auto":
        if _ENV_BACKEND not in SCAN_BACKENDS:
            raise ValueError(f"VMUNETV2_SCAN_BACKEND must be one of {SCAN_BACKENDS}, got {_ENV_BACKEND!r}.")
        backend = _ENV_BACKEND
    if backend == "mamba":
        mamba_scan_fn(device)  # raises with the reason (CPU tensors, no kernel, failed probe) and the install hint
        _log_once("mamba", "forced")
        return "mamba"
    if backend in ("cpu", "cpu_fused"):
        ok, reason = cpu_status()
        if not ok:
            raise RuntimeError(f"scan backend {backend!r} is unavailable: {reason}.")
        if device.type != "cpu":
            raise RuntimeError(f"scan backend {backend!r} needs CPU tensors, got tensors on {device}.")
        _log_once(backend, "forced")
        return backend
    if backend == "auto":
        if device.type == "cuda":
            ok, reason = mamba_status(device)
            if ok:
                _log_once("mamba", reason)
                return "mamba"
            # The slow path on a GPU is worth a warning: the user most likely meant to have the kernel.
            _log_once("torch", f"auto on {device}: mamba unavailable: {reason}. {MAMBA_INSTALL_HINT}", logging.WARNING)
            return "torch"
        if device.type == "cpu":
            ok, reason = cpu_status()
            if ok:
                _log_once("cpu_fused", f"auto: {reason}")
                return "cpu_fused"
            _log_once("torch", f"auto: cpu kernel unavailable: {reason}")
            return "torch"
        _log_once("torch", f"auto: tensors on {device}")
        return "torch"
    _log_once(backend, "requested")
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan ``y = S6(u; delta, A, B, C, D)`` with an optional SiLU gate z.

    While a model is traced for export, the scan is the TorchScript loop of
    :func:`~vmunetv2_monai.ops.selective_scan.scripted.selective_scan_scripted` whatever ``backend`` says.

    Args:
        u: input sequence ``(batch, dim, L)``.
        delta: step size before bias / softplus, ``(batch, dim, L)``.
        A: real state matrix ``(dim, N)`` (negative for decay).
        B: input projection ``(batch, N, L)``, or grouped ``(batch, G, N, L)``: group g serves channels
            ``[g * dim / G, (g + 1) * dim / G)``.
        C: output projection, ``(batch, N, L)`` or grouped ``(batch, G, N, L)`` as ``B``.
        D: skip connection ``(dim,)``, optional.
        z: gate ``(batch, dim, L)``: the output is multiplied by ``silu(z)``; optional.
        delta_bias: ``(dim,)``, added to delta before the softplus; optional.
        delta_softplus: apply softplus to ``delta + delta_bias``. Defaults to False.
        backend: one of :data:`SCAN_BACKENDS`, resolved by :func:`resolve_backend`. Defaults to ``"auto"``.

    Returns:
        ``(batch, dim, L)`` in u's dtype (computed in float32, or float64 for float64 input).

    Raises:
        ValueError: for an unknown backend, or (on our backends) arguments of the wrong shape.
        RuntimeError: when a forced ``"mamba"`` or ``"cpu"`` backend cannot run.
    """
    if torch.jit.is_tracing():
        # Compiled kernels cannot be traced and the blocked loop would freeze L (the image size) into the trace.
        _log_once("scripted", "tracing for export: TorchScript loop, any sequence length")
        return selective_scan_scripted(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    name = resolve_backend(backend, u.device)
    if name == "mamba":
        return mamba_scan_fn(u.device)(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name in ("cpu", "cpu_fused"):  # a plain scan has no cross-scan to fuse: cpu_fused runs it as cpu
        why_not = cpu_unsupported_reason(u, A)
        if why_not is None:
            fn = selective_scan_cpu
        else:
            _log_once("torch", f"cpu kernel does not take {why_not}")
            fn = selective_scan_blocked
    else:
        fn = selective_scan_blocked if name == "torch" else selective_scan_reference
    # Autocast would run the blocked scan's matmul in fp16/bf16; our backends state float32 compute. Their
    # backward passes hold no autocast-eligible op, so switching it off around the forward is enough.
    with torch.autocast(device_type=u.device.type, enabled=False):
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
