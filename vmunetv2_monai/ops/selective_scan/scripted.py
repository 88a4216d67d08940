"""TorchScript selective scan, used while a model is traced for export (ONNX, TorchScript).

The compiled kernels (``mamba``, ``cpu``) are opaque to the tracer and the blocked ``torch`` backend unrolls a
Python loop over the sequence, which would freeze the sequence length, i.e. the image size. This loop is a
TorchScript function instead, so a trace keeps it as a loop whose trip count follows the input (an ONNX
``Loop``): exported models accept any image size. It is a plain per-step recurrence, for export only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .shapes import check_scan_inputs, skip_and_gate, step_sizes

__all__ = ["selective_scan_scripted"]


def _scan_loop(u: torch.Tensor, dl: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """u, dl ``(batch, G, P, L)``; A ``(G, P, N)``; B, C ``(batch, G, N, L)`` -> y ``(batch, G, P, L)`` (no D)."""
    h = torch.zeros(u.shape[0], u.shape[1], u.shape[2], A.shape[2], dtype=u.dtype, device=u.device)
    ys = []
    for t in range(u.shape[3]):
        dt = dl[:, :, :, t].unsqueeze(-1)
        h = torch.exp(dt * A) * h + (dt * u[:, :, :, t].unsqueeze(-1)) * B[:, :, :, t].unsqueeze(2)
        ys.append((h * C[:, :, :, t].unsqueeze(2)).sum(-1))
    return torch.stack(ys, dim=-1)


@functools.lru_cache(maxsize=1)
def _scripted_loop() -> Callable:
    return torch.jit.script(_scan_loop)  # compiled on first export, not at import


def selective_scan_scripted(
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
    """Selective scan with mamba-ssm's ``selective_scan_fn`` contract, traceable with a dynamic length.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus: as for
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan`, where the shapes are listed.

    Returns:
        ``(batch, dim, L)`` in u's dtype (computed in float32 by the scripted per-step loop).

    Raises:
        ValueError: for arguments of the wrong shape.
    """
    s = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, _ = u.shape
    g = s.groups
    uf = u.float()
    dl = step_sizes(delta, delta_bias, delta_softplus, torch.float32)
    y = _scripted_loop()(
        uf.reshape(batch, g, dim // g, -1),
        dl.reshape(batch, g, dim // g, -1),
        A.float().reshape(g, dim // g, -1),
        s.B.float(),
        s.C.float(),
    ).reshape(batch, dim, -1)
    return skip_and_gate(y, u, D, z)
