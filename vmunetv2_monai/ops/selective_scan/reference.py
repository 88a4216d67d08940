"""Plain sequential selective scan: the oracle that the fast backends are tested against.

The recurrence (Mamba, Gu & Dao 2023, Algorithm 2), per batch b, channel d and state n::

    delta' = softplus(delta + delta_bias)            (or delta + delta_bias without softplus)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t
    y_t    = <C_t, h_t> + D * u_t
    out_t  = y_t * silu(z_t)                           (when z is given)

It is a Python loop over L that keeps autograd's graph of every step: correct and slow, for tests only.
"""

from __future__ import annotations

import torch

from .shapes import ScanInputs, check_scan_inputs, compute_dtype, skip_and_gate, step_sizes

__all__ = ["selective_scan_reference"]


def selective_scan_reference(
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
    """Sequential selective scan with mamba-ssm's ``selective_scan_fn`` contract (real-valued A only).

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus: as for
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan`, where the shapes are listed.

    Returns:
        ``(batch, dim, L)`` in u's dtype (computed in float32, or float64 for float64 input).

    Raises:
        ValueError: for arguments of the wrong shape, or a complex ``A``.
    """
    s: ScanInputs = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    ctype = compute_dtype(u)
    batch, dim, length = u.shape
    g, n = s.groups, A.shape[1]
    uf = u.to(ctype)
    df = step_sizes(delta, delta_bias, delta_softplus, ctype)
    # Grouped B/C: channel block k of size dim // g uses group k.
    Bf = s.B.to(ctype).repeat_interleave(dim // g, dim=1)  # (batch, dim, N, L)
    Cf = s.C.to(ctype).repeat_interleave(dim // g, dim=1)
    Af = A.to(ctype)
    h = u.new_zeros((batch, dim, n), dtype=ctype)
    ys = []
    # unbind once: per-step indexing would make autograd scatter into a full-size gradient at every step.
    for dt, bt, ct, ut in zip(df.unbind(-1), Bf.unbind(-1), Cf.unbind(-1), uf.unbind(-1), strict=True):
        dt = dt.unsqueeze(-1)  # (batch, dim, 1)
        h = torch.exp(dt * Af) * h + dt * bt * ut.unsqueeze(-1)
        ys.append((h * ct).sum(-1))
    return skip_and_gate(torch.stack(ys, dim=-1), u, D, z)
