"""SS2D's cross-scan, selective scan and cross-merge as one compiled CPU operation (the ``cpu_fused`` path).

The unfused SS2D path materialises the four scan orders of the feature map (``cross_scan``, 4 copies of it), runs
the scan on them and maps the four outputs back (``cross_merge``). Here the C++ kernel (``csrc/cross_scan_cpu.cpp``,
``cross_scan_forward`` / ``cross_scan_backward``) reads the channels-last map ``(B, H, W, D)`` in each direction's
order, 16 channels to a vector where torch reports AVX-512 and 8 elsewhere, and accumulates the directions' outputs
(with the D skip) straight into one ``(B, H, W, D)`` map; its backward scatters the input gradient the same way.
``x_proj`` runs once on the map in row-major order for all four directions (one matmul, on oneDNN:
:mod:`~vmunetv2_monai.ops.linear_cpu`); the kernel reads each
direction's step-size rows, B and C from its output at the step's position, so nothing is reordered in PyTorch.

Float32 CPU tensors and d_state N in {8, 16, 24, 32} only: :func:`cross_scan_supported` says when this path applies.
"""

from __future__ import annotations

import torch

from ..linear_cpu import linear_cpu
from .cpu import _load, cpu_unsupported_reason

__all__ = ["cross_scan_supported", "cross_selective_scan_cpu"]


def cross_scan_supported(x: torch.Tensor, A_logs: torch.Tensor) -> bool:
    """Whether :func:`cross_selective_scan_cpu` takes this map: a float32 CPU tensor, N supported by the kernel,
    no CPU autocast (under autocast the unfused path keeps its bf16 projections), not traced for export.

    Args:
        x: the map, in any layout (only its dtype and device are read).
        A_logs: ``(4 * D, N)``.

    Returns:
        True when the fused path applies.
    """
    return (
        x.dtype == torch.float32
        and cpu_unsupported_reason(x, A_logs) is None
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


class _CrossScan(torch.autograd.Function):
    """The fused kernel: u ``(B, H, W, D)``; x_dbl ``(B, L, 4, R + 2 N)``, each direction's dts, B and C at every
    row-major position; dtw ``(4, D, R)``; A_logs ``(4, D, N)`` (the kernel forms the state matrix ``-exp(A_logs)``
    and returns A_logs' gradient); Ds, bias ``(4, D)``. Output ``(B, H, W, D)``: the merged directions, D skip
    included."""

    @staticmethod
    def forward(ctx, u, x_dbl, dtw, A_logs, Ds, bias, save: bool):  # type: ignore[override]
        module, _ = _load()
        y, hsave = module.cross_scan_forward(u, x_dbl, dtw, A_logs, Ds, bias, save)
        if save:
            ctx.save_for_backward(u, x_dbl, dtw, A_logs, Ds, bias, hsave)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        module, _ = _load()
        u, x_dbl, dtw, A_logs, Ds, bias, hsave = ctx.saved_tensors
        # du, dx_dbl (B, L, 4, R + 2 N), ddtw, dA_logs, dDs, dbias: the kernel turns the step sizes' gradient into
        # those of dts and dtw itself, chunk by chunk
        grads = module.cross_scan_backward(u, x_dbl, dtw, A_logs, Ds, bias, hsave, dy.contiguous())
        return (*grads, None)


def cross_selective_scan_cpu(
    x: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """``cross_merge(selective_scan(cross_scan(x), ...))`` of SS2D (softplus step sizes, D skip, no z gate) on
    the compiled kernel, forward and backward, channels-last in and out. The caller checks
    :func:`cross_scan_supported` first.

    Args:
        x: the map after the depthwise convolution and SiLU, channels-last ``(B, H, W, D)`` float32.
        x_proj_weight: per-direction projection to ``(dt_rank + 2 N)`` rows, ``(4, dt_rank + 2 N, D)``.
        dt_projs_weight: per-direction step-size projection ``(4, D, dt_rank)``.
        dt_projs_bias: step-size bias ``(4, D)``.
        A_logs: ``(4 * D, N)``; the state matrix is ``-exp(A_logs)``.
        Ds: skip weights ``(4 * D,)``.

    Returns:
        ``(B, H, W, D)``: at each position, the sum over the four directions of scan output plus ``D u``.
    """
    b, h, w, d = x.shape
    k, c, _ = x_proj_weight.shape
    u = x.contiguous()
    x_dbl = linear_cpu(u.reshape(b, h * w, d), x_proj_weight.reshape(k * c, d))  # (B, L, 4 c), row-major positions
    args = (
        u,
        x_dbl.view(b, h * w, k, c),
        dt_projs_weight.contiguous(),
        A_logs.reshape(k, d, A_logs.shape[1]),
        Ds.reshape(k, d).contiguous(),
        dt_projs_bias.reshape(k, d).contiguous(),
    )
    save = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    return _CrossScan.apply(*args, save)
