"""Four-direction cross-scan and cross-merge of VMamba's SS2D.

Directions for a ``(B, C, H, W)`` map, each a sequence of length ``L = H * W``:

- k = 0: row-major flatten (index ``h * W + w``)
- k = 1: column-major flatten (index ``w * H + h``, the flatten of the H/W-transposed map)
- k = 2: k = 0 reversed
- k = 3: k = 1 reversed

``cross_merge`` maps each direction back to row-major order and sums the four. It is the adjoint
(transpose) of ``cross_scan``.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["cross_merge", "cross_scan", "cross_scan_positions"]


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Flatten a map into the four scan orders (see the module docstring).

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, 4, C, H * W)``: directions k = 0..3.
    """
    b, c, h, w = x.shape
    row = x.flatten(2)
    col = x.transpose(2, 3).flatten(2)
    xs = torch.stack([row, col], dim=1)  # (B, 2, C, L)
    return torch.cat([xs, xs.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Map the four directions' outputs back to row-major order and sum them (the adjoint of :func:`cross_scan`).

    Args:
        ys: ``(B, 4, C, H * W)`` outputs, each in its direction's scan order.
        h: height H of the map.
        w: width W of the map.

    Returns:
        ``(B, C, H * W)`` in row-major order.

    Raises:
        ValueError: when ``ys`` does not have 4 directions of length ``h * w``.
    """
    b, k, c, length = ys.shape
    if k != 4 or length != h * w:
        raise ValueError(f"expected (B, 4, C, {h}*{w}) scan outputs, got {list(ys.shape)}.")
    fwd = ys[:, :2] + ys[:, 2:].flip(-1)  # undo the reversal of k = 2, 3
    col = fwd[:, 1].reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
    return fwd[:, 0] + col


@functools.lru_cache(maxsize=64)
def cross_scan_positions(h: int, w: int) -> torch.Tensor:
    """The row-major position ``h * W + w`` that each direction visits at each step (see the module docstring).

    ``cross_scan(x)[:, k, :, t] == x.flatten(2)[:, :, positions[k, t]]``. Cached per size; do not modify the result.

    Args:
        h: height H of the map.
        w: width W of the map.

    Returns:
        ``(4, H * W)`` int64 CPU tensor.
    """
    return cross_scan(torch.arange(h * w).reshape(1, 1, h, w))[0, :, 0]
