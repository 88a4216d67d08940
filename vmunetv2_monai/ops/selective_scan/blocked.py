"""Blocked selective scan in pure PyTorch with a hand-written backward (the ``torch`` backend).

The sequence is cut into time blocks of ``block`` steps. Per block, the decays ``exp(delta*A)`` and inputs
``delta*B*u`` are computed in one vectorised pass in time-major layout ``(T, batch, G, dim/G, N)``, the
recurrence runs in place over the T contiguous slices, and the outputs are one batched reduction over N.
Only the state at each block boundary is kept for backward (``(L/block, batch, dim, N)``); backward recomputes
a block's states from its boundary state and runs the adjoint recurrence in reverse. Peak memory is therefore
a few block-sized temporaries, not the ``(batch, dim, L, N)`` state history that autograd through a loop keeps.
Works on any device and dtype (float32 compute for half types).
"""

from __future__ import annotations

import torch

from .shapes import check_scan_inputs, compute_dtype, skip_and_gate, step_sizes

__all__ = ["selective_scan_blocked"]


def _block_size(rows: int, n: int) -> int:
    """Steps per block so that one ``(T, rows, N)`` temporary stays near 4 MB (between 16 and 256 steps)."""
    return int(min(256, max(16, (1 << 20) // max(1, rows * n))))


class _BlockedScan(torch.autograd.Function):
    """y = scan(u, dl, A, B, C) without D/z; dl is the final step size (after bias and softplus).

    Layout: u, dl ``(batch, G, P, L)``; A ``(G, P, N)``; B, C ``(batch, G, N, L)``; y ``(batch, G, P, L)``.
    """

    @staticmethod
    def forward(ctx, u, dl, A, B, C, block: int):  # type: ignore[override]
        length = u.shape[-1]
        y = torch.empty_like(u)
        h = u.new_zeros(u.shape[:-1] + (A.shape[-1],))
        starts = []
        for t0 in range(0, length, block):
            t1 = min(t0 + block, length)
            starts.append(h)
            hs, _ = _block_states(u, dl, A, B, t0, t1, h)
            c = _time_major(C, t0, t1).unsqueeze(-1)  # (T, batch, G, N, 1)
            y[..., t0:t1] = torch.matmul(hs, c).squeeze(-1).permute(1, 2, 3, 0)
            h = hs[-1]
        ctx.block = block
        ctx.save_for_backward(u, dl, A, B, C, torch.stack(starts))
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        u, dl, A, B, C, starts = ctx.saved_tensors
        block, length = ctx.block, u.shape[-1]
        du, ddl = torch.empty_like(u), torch.empty_like(dl)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = None  # exp(dl_{t1} A) * dh_{t1}: the next block's contribution to this block's last adjoint
        block_starts = list(range(0, length, block))
        for i in reversed(range(len(block_starts))):
            t0 = block_starts[i]
            t1 = min(t0 + block, length)
            h0 = starts[i]
            hs, decay = _block_states(u, dl, A, B, t0, t1, h0)
            dyt = _time_major(dy, t0, t1)  # (T, batch, G, P)
            ct = _time_major(C, t0, t1).unsqueeze(-2)  # (T, batch, G, 1, N)
            bt = _time_major(B, t0, t1).unsqueeze(-2)
            dh = dyt.unsqueeze(-1) * ct  # becomes the state adjoint after the reverse recurrence
            if carry is not None:
                dh[-1] += carry
            for t in range(t1 - t0 - 2, -1, -1):
                dh[t].addcmul_(decay[t + 1], dh[t + 1])
            carry = decay[0] * dh[0]
            hprev = torch.cat([h0.unsqueeze(0), hs[:-1]], dim=0)
            ddecay = dh * hprev * decay  # gradient w.r.t. (dl * A) of each step
            ut = _time_major(u, t0, t1)
            dlt = _time_major(dl, t0, t1)
            dhb = (dh * bt).sum(-1)  # (T, batch, G, P)
            ddl[..., t0:t1] = ((ddecay * A).sum(-1) + dhb * ut).permute(1, 2, 3, 0)
            du[..., t0:t1] = (dhb * dlt).permute(1, 2, 3, 0)
            dA += (ddecay * dlt.unsqueeze(-1)).sum((0, 1))
            dB[..., t0:t1] = (dh * (dlt * ut).unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
            dC[..., t0:t1] = (hs * dyt.unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
        return du, ddl, dA, dB, dC, None


def _time_major(x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """``x[..., t0:t1]`` of a ``(batch, G, K, L)`` tensor as a contiguous ``(T, batch, G, K)`` tensor."""
    return x[..., t0:t1].permute(3, 0, 1, 2).contiguous()


def _block_states(
    u: torch.Tensor, dl: torch.Tensor, A: torch.Tensor, B: torch.Tensor, t0: int, t1: int, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``h_t`` for t in [t0, t1) from the state before t0; returns (states, decays), both (T, batch, G, P, N)."""
    # Time-major contiguous copies, so each step's slice below is one contiguous block of memory.
    dlt = _time_major(dl, t0, t1).unsqueeze(-1)  # (T, batch, G, P, 1)
    decay = torch.exp(dlt * A)
    bt = _time_major(B, t0, t1).unsqueeze(-2)  # (T, batch, G, 1, N)
    hs = (dlt * _time_major(u, t0, t1).unsqueeze(-1)) * bt
    hs[0].addcmul_(decay[0], h0)
    for t in range(1, t1 - t0):
        hs[t].addcmul_(decay[t], hs[t - 1])
    return hs, decay


def selective_scan_blocked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    block: int | None = None,
) -> torch.Tensor:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract, blocked over time (any device).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus: as for
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan`, where the shapes are listed.
        block: steps per time block; None picks a size that keeps one block's temporaries near 4 MB.

    Returns:
        ``(batch, dim, L)`` in u's dtype (computed in float32, or float64 for float64 input).

    Raises:
        ValueError: for arguments of the wrong shape, or ``block < 1``.
    """
    s = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    ctype = compute_dtype(u)
    batch, dim, length = u.shape
    g, n = s.groups, A.shape[1]
    uf = u.to(ctype)
    dl = step_sizes(delta, delta_bias, delta_softplus, ctype)
    step = block if block is not None else _block_size(batch * dim, n)
    if step < 1:
        raise ValueError(f"block must be >= 1, got {step}.")
    y = _BlockedScan.apply(
        uf.reshape(batch, g, dim // g, length),
        dl.reshape(batch, g, dim // g, length),
        A.to(ctype).reshape(g, dim // g, n),
        s.B.to(ctype),
        s.C.to(ctype),
        step,
    ).reshape(batch, dim, length)
    return skip_and_gate(y, u, D, z)
