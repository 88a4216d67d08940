"""SS2D's cross-scan, selective scan and cross-merge as one compiled CPU operation (the ``cpu_fused`` path).

The unfused SS2D path materialises the four scan orders of the feature map (``cross_scan``, 4 copies of it), runs
the scan on them and maps the four outputs back (``cross_merge``). Here the C++ kernel of the ``cpu`` backend
(``csrc/scan_cpu.cpp``, ``cross_scan_forward`` / ``cross_scan_backward``) reads the map ``(B, D, H, W)`` in each
direction's order and accumulates the directions' outputs (with the D skip) straight into one ``(B, D, H * W)``
map; its backward scatters the input gradient the same way. Only the small projections are reordered in
PyTorch: ``x_proj`` runs once on the map in row-major order for all four directions (one matmul), and its
``dt_rank + 2 N`` output rows per direction are gathered into that direction's time order, where the step
sizes (``dt_projs``) and B, C are formed as on the unfused path.

Float32 CPU tensors and d_state N in {8, 16, 24, 32} only: :func:`cross_scan_supported` says when this path applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cross_scan import cross_scan_positions
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
    """The fused kernel: u ``(B, H, W, D)``; dts ``(B, 4, R, L)`` and Bm, Cm ``(B, 4, L, N)`` in each direction's
    time order; dtw ``(4, D, R)``; A ``(4, D, N)``; Ds, bias ``(4, D)``. Output ``(B, H, W, D)``: the merged
    directions, D skip included."""

    @staticmethod
    def forward(ctx, u, dts, dtw, A, Bm, Cm, Ds, bias, save: bool):  # type: ignore[override]
        module, _ = _load()
        y, hsave = module.cross_scan_forward(u, dts, dtw, A, Bm, Cm, Ds, bias, True, save)
        if save:
            ctx.save_for_backward(u, dts, dtw, A, Bm, Cm, Ds, bias, hsave)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        module, _ = _load()
        u, dts, dtw, A, Bm, Cm, Ds, bias, hsave = ctx.saved_tensors
        du, ddelta, dA, dBm, dCm, dDs, dbias = module.cross_scan_backward(
            u, dts, dtw, A, Bm, Cm, Ds, bias, True, hsave, dy.contiguous()
        )
        # the raw step sizes are dtw[k] @ dts[:, k]: their gradient ddelta (B, 4, D, L) gives those of dts and dtw
        # (batched matmuls over (B, 4), which read ddelta in place; einsum would first permute a copy of it)
        ddts = torch.matmul(dtw.transpose(1, 2), ddelta) if ctx.needs_input_grad[1] else None
        ddtw = torch.matmul(ddelta, dts.transpose(2, 3)).sum(0) if ctx.needs_input_grad[2] else None
        return du, ddts, ddtw, dA, dBm, dCm, dDs, dbias, None


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
    n, rank, length = A_logs.shape[1], dt_projs_weight.shape[2], h * w
    u = x.contiguous()
    x_dbl = F.linear(u.reshape(b, length, d), x_proj_weight.reshape(k * c, d))  # (B, L, 4 c), row-major positions
    order = cross_scan_positions(h, w).to(x.device)[None, :, :, None].expand(b, k, length, c)
    x_dbl = x_dbl.reshape(b, length, k, c).transpose(1, 2).gather(2, order)  # (B, 4, L, c), each in its time order
    dts, bs, cs = torch.split(x_dbl, [rank, n, n], dim=3)
    args = (
        u,
        dts.transpose(-1, -2).contiguous(),
        dt_projs_weight.contiguous(),
        -torch.exp(A_logs).reshape(k, d, n),
        bs.contiguous(),
        cs.contiguous(),
        Ds.reshape(k, d).contiguous(),
        dt_projs_bias.reshape(k, d).contiguous(),
    )
    save = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    return _CrossScan.apply(*args, save)
