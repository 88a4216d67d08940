"""Cross-scan / cross-merge against an explicit index construction."""

from __future__ import annotations

import pytest
import torch

from vmunetv2_monai.ops.cross_scan import cross_merge, cross_scan, cross_scan_positions


def _explicit_orders(h: int, w: int) -> list[list[int]]:
    """Row-major position read at each sequence step, for the four directions."""
    row = [i * w + j for i in range(h) for j in range(w)]
    col = [i * w + j for j in range(w) for i in range(h)]
    return [row, col, row[::-1], col[::-1]]


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 4), (7, 7), (3, 8)])
def test_cross_scan_matches_index_construction(h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, h * w)
    flat = x.flatten(2)
    for k, order in enumerate(_explicit_orders(h, w)):
        torch.testing.assert_close(xs[:, k], flat[:, :, order], rtol=0, atol=0)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 4), (3, 8)])
def test_cross_scan_positions_match_index_construction(h: int, w: int) -> None:
    assert cross_scan_positions(h, w).tolist() == _explicit_orders(h, w)


@pytest.mark.parametrize("h,w", [(2, 3), (5, 4), (6, 6)])
def test_cross_merge_matches_index_construction(h: int, w: int) -> None:
    ys = torch.randn(2, 4, 3, h * w)
    merged = cross_merge(ys, h, w)
    expected = torch.zeros(2, 3, h * w)
    for k, order in enumerate(_explicit_orders(h, w)):
        expected[:, :, order] += ys[:, k]
    torch.testing.assert_close(merged, expected)


def test_cross_merge_is_adjoint_of_cross_scan() -> None:
    x, ys = torch.randn(1, 2, 5, 3), torch.randn(1, 4, 2, 15)
    lhs = (cross_scan(x) * ys).sum()
    rhs = (x.flatten(2) * cross_merge(ys, 5, 3)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_cross_merge_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="scan outputs"):
        cross_merge(torch.randn(1, 4, 2, 10), 3, 3)
