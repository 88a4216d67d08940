"""Shared pytest fixtures and helpers for the whole suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the largest magnitude of the reference ``b``."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
