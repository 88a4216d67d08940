"""Argument checking and the elementwise pre/post steps shared by the selective-scan backends."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ScanInputs", "check_scan_inputs", "compute_dtype", "skip_and_gate", "step_sizes"]


@dataclass(frozen=True)
class ScanInputs:
    """B and C normalised to the grouped layout ``(batch, G, N, L)``, and the group count G.

    Attributes:
        B: input projection ``(batch, G, N, L)``.
        C: output projection ``(batch, G, N, L)``.
        groups: the group count G (1 for ungrouped ``(batch, N, L)`` input).
    """

    B: torch.Tensor
    C: torch.Tensor
    groups: int


def _grouped(name: str, x: torch.Tensor, batch: int, n: int, length: int) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[0] != batch or x.shape[2] != n or x.shape[3] != length:
        raise ValueError(
            f"{name} must have shape (batch={batch}, N={n}, L={length}) or (batch, G, N, L), got {tuple(x.shape)}."
        )
    return x


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> ScanInputs:
    """Validate the scan's arguments and return B and C in grouped form.

    Args:
        u, delta, A, B, C, D, z, delta_bias: as for :func:`vmunetv2_monai.ops.selective_scan.selective_scan`.

    Returns:
        :class:`ScanInputs` with B and C as ``(batch, G, N, L)``.

    Raises:
        ValueError: naming the argument whose shape does not fit, or for a complex ``A``.
    """
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, dim, L), got {tuple(u.shape)}.")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}.")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, N), got {tuple(A.shape)}.")
    if A.is_complex():
        raise ValueError("complex A is not supported; VM-UNetV2 uses real A = -exp(A_logs).")
    n = A.shape[1]
    Bg = _grouped("B", B, batch, n, length)
    Cg = _grouped("C", C, batch, n, length)
    groups = Bg.shape[1]
    if Cg.shape[1] != groups or dim % groups != 0:
        raise ValueError(
            f"B and C need the same group count G dividing dim={dim}, got {Bg.shape[1]} and {Cg.shape[1]}."
        )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"{name} must have shape (dim={dim},), got {tuple(v.shape)}.")
    return ScanInputs(B=Bg, C=Cg, groups=groups)


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """The dtype our backends compute in: float64 stays float64, every other dtype is computed in float32.

    Args:
        u: the scan input.

    Returns:
        ``torch.float64`` or ``torch.float32``.
    """
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def step_sizes(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """The scan's step size ``softplus(delta + delta_bias)`` (or without softplus).

    Args:
        delta: ``(batch, dim, L)``.
        delta_bias: ``(dim,)`` or None.
        softplus: apply the softplus.
        dtype: the dtype to compute and return in.

    Returns:
        ``(batch, dim, L)`` in ``dtype``.
    """
    dl = delta.to(dtype)
    if delta_bias is not None:
        dl = dl + delta_bias.to(dtype)[None, :, None]
    return F.softplus(dl) if softplus else dl


def skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``(y + D u) * silu(z)`` with the optional terms left out.

    Args:
        y: scan output ``(batch, dim, L)`` in the compute dtype.
        u: scan input ``(batch, dim, L)``.
        D: skip weights ``(dim,)`` or None.
        z: gate ``(batch, dim, L)`` or None.

    Returns:
        ``(batch, dim, L)`` in u's dtype.
    """
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)
