"""SS2D's output norm and gate, ``LayerNorm(y) * silu(z)``, as one compiled CPU operation (the ``cpu_fused`` path).

In PyTorch the same takes LayerNorm, SiLU and a product forward, and their three backwards, each a pass over a map
of the block's size; the C++ kernel (``csrc/gated_norm_cpu.cpp``) reads y and z once forward and dout, y and z once
backward, recomputing the normalised map and the gate instead of saving them. Float32 CPU tensors with a multiple of
16 channels: :func:`gated_norm_supported` says when it applies.
"""

from __future__ import annotations

import torch

from .cpu import _load

__all__ = ["gated_norm_cpu", "gated_norm_supported"]


def gated_norm_supported(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm) -> bool:
    """Whether :func:`gated_norm_cpu` takes these inputs: float32 CPU tensors of the same shape, a multiple of 16
    channels, an affine LayerNorm over the last dimension only, no CPU autocast, not traced, kernel built.

    Args:
        y: the merged scan output ``(..., P)``.
        z: the gate's input, shaped like ``y``.
        norm: the block's ``out_norm``.

    Returns:
        True when the fused op applies.
    """
    return (
        y.dtype == torch.float32
        and z.dtype == torch.float32
        and y.device.type == "cpu"
        and z.device.type == "cpu"
        and y.shape == z.shape
        and y.shape[-1] % 16 == 0
        and tuple(norm.normalized_shape) == (y.shape[-1],)
        and norm.weight is not None
        and norm.bias is not None
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and _load()[0] is not None
    )


class _GatedNorm(torch.autograd.Function):
    """The kernel: y, z ``(rows, P)``; weight, bias ``(P,)``. Output ``(rows, P)``."""

    @staticmethod
    def forward(ctx, y, z, weight, bias, eps: float):  # type: ignore[override]
        module, _ = _load()
        out, mean, rstd = module.gated_norm_forward(y, z, weight, bias, eps)
        ctx.save_for_backward(y, z, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        module, _ = _load()
        dy, dz, dweight, dbias = module.gated_norm_backward(dout.contiguous(), *ctx.saved_tensors)
        return dy, dz, dweight, dbias, None


def gated_norm_cpu(y: torch.Tensor, z: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm(y) * silu(z)`` on the compiled kernel, forward and backward. The caller checks
    :func:`gated_norm_supported` first.

    Args:
        y: ``(..., P)`` float32.
        z: shaped like ``y``.
        norm: a LayerNorm over ``P`` with weight and bias.

    Returns:
        ``(..., P)``, like ``y``.
    """
    return _GatedNorm.apply(y.contiguous(), z.contiguous(), norm.weight, norm.bias, float(norm.eps))
