"""The benchmarks' work count (``scripts/bench_common.py``): oneDNN's linear counts as many multiply-adds as
``F.linear``, which ``FlopCounterMode`` alone would count as zero."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_common import network_work  # noqa: E402 (scripts/ is on sys.path only now)

from vmunetv2_monai.ops.linear_cpu import linear_cpu, linear_cpu_supported  # noqa: E402


class _Product(nn.Module):
    def __init__(self, product) -> None:
        super().__init__()
        self.product = product
        self.weight = nn.Parameter(torch.randn(12, 20))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x, self.weight)


def test_onednn_linear_counts_as_f_linear() -> None:
    x = torch.randn(3, 7, 20)
    assert linear_cpu_supported(x, torch.randn(12, 20))
    macs, updates = network_work(_Product(linear_cpu), x)
    assert macs == network_work(_Product(F.linear), x)[0] == 3 * 7 * 20 * 12
    assert updates == 0
