"""Mixed-precision policy for training and inference: which autocast dtype the bundle's ``amp`` setting means.

``amp`` is one of ``"auto"`` (bf16 autocast on a CUDA device that supports bf16, else off), ``"bf16"``,
``"fp16"``, ``"off"``, or a bool (``True`` is ``"auto"``, ``False`` is ``"off"``). AMP only applies on CUDA
devices (MONAI's engines autocast with ``torch.autocast("cuda")``); elsewhere the answer is always off.

fp16 is never chosen automatically: with fp16 autocast and GradScaler at its initial scale, 93-100 % of the
stage-1 ``dt_projs_weight`` gradient entries were exactly zero (16-29 % at stages 2-3, 0 % in bf16 and fp32;
measured under emulated CUDA autocast, issue 14). The authors train in fp32.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["AMP_CHOICES", "autocast_dtype"]

logger = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
"""The string values of the bundle's ``amp`` setting."""
_warned: set[str] = set()


def _log_once(level: int, message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.log(level, message)


def autocast_dtype(amp: bool | str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype that ``amp`` means on ``device``, or None for no AMP.

    ``"fp16"`` logs a WARNING (once) about gradient underflow; ``"bf16"`` or ``"fp16"`` on a device other than CUDA
    a WARNING (once) that it runs in fp32.

    Args:
        amp: one of :data:`AMP_CHOICES` or a bool (``True`` is ``"auto"``, ``False`` is ``"off"``).
        device: the device the engine runs on.

    Returns:
        ``torch.bfloat16``, ``torch.float16``, or None (fp32: ``"off"``, a device other than CUDA, or ``"auto"``
        on a CUDA device without bf16).

    Raises:
        ValueError: for an unknown ``amp`` setting.
        RuntimeError: when ``"bf16"`` is asked of a CUDA device without bf16 support.
    """
    choice = ("auto" if amp else "off") if isinstance(amp, bool) else amp
    if choice not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES} or a bool, got {amp!r}.")
    device = torch.device(device)
    if choice in ("bf16", "fp16") and device.type != "cuda":
        _log_once(logging.WARNING, f"amp={choice!r} on {device}: AMP applies on CUDA devices only, running in fp32.")
    if choice == "off" or device.type != "cuda":
        return None
    if choice == "fp16":
        _log_once(
            logging.WARNING,
            "amp='fp16': fp16 autocast underflows VM-UNetV2's step-size gradients (93-100 % of the stage-1 "
            "dt_projs_weight gradient entries were zero at GradScaler's initial scale); prefer 'bf16' or 'off'.",
        )
        return torch.float16
    bf16_ok = torch.cuda.is_bf16_supported()
    if choice == "bf16" and not bf16_ok:
        raise RuntimeError(f"amp='bf16' but {device} does not support bf16; use amp='off' (or 'fp16', see docs).")
    if choice == "auto" and not bf16_ok:
        _log_once(logging.INFO, f"amp='auto': {device} has no bf16, training in fp32 (fp16 only with amp='fp16').")
        return None
    return torch.bfloat16
