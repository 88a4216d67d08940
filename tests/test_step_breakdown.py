"""The benchmark's step breakdown (``scripts/step_breakdown.py``): events land in the right part, the products'
FLOPs count forward and both gradients on either linear, and the parts with the rest add up to the timed call."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from step_breakdown import breakdown, part_of, product_flops  # noqa: E402 (scripts/ is on sys.path only now)

from vmunetv2_monai import VMUNetV2  # noqa: E402
from vmunetv2_monai.ops.linear_cpu import linear_cpu, linear_cpu_supported  # noqa: E402
from vmunetv2_monai.ops.selective_scan.cpu import _load  # noqa: E402


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("mkldnn::_linear_pointwise", "products"),
        ("aten::addmm", "products"),
        ("_CrossScan", "scan_forward"),
        ("_CrossScanBackward", "scan_backward"),
        ("aten::mkldnn_convolution", "convolutions"),
        ("aten::convolution_backward", "convolutions"),
        ("aten::add_", None),
        ("autograd::engine::evaluate_function: _CrossScanBackward", None),  # the engine's wrapper, not the kernel
    ],
)
def test_part_of(name: str, part: str | None) -> None:
    assert part_of(name) == part


def _step(product, rows: int = 64, cin: int = 48, cout: int = 40):
    x = torch.randn(rows, cin, requires_grad=True)
    weight = torch.randn(cout, cin, requires_grad=True)

    def step() -> None:
        product(x, weight).sum().backward()

    return step


@pytest.mark.parametrize("product", [F.linear, linear_cpu], ids=["F.linear", "linear_cpu"])
def test_product_flops_count_forward_and_both_gradients(product) -> None:
    if product is linear_cpu and not linear_cpu_supported(torch.randn(64, 48), torch.randn(40, 48)):
        pytest.skip("oneDNN's linear is not available in this PyTorch build")
    assert product_flops(_step(product)) == 3 * 2 * 64 * 48 * 40


def test_parts_and_rest_add_up_to_the_timed_call() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x = torch.randn(4, 3, 16, 16)
    parts = breakdown(lambda: net(x).sum().backward(), repeats=3)
    named = ("products", "scan_forward", "scan_backward", "convolutions", "rest")
    assert parts["total_s"] == pytest.approx(sum(parts[k] for k in named))
    assert parts["products"] > 0 and parts["convolutions"] > 0
    assert parts["scan_forward"] == parts["scan_backward"] == 0
    assert parts["product_flops_per_s"] == pytest.approx(3 * 2 * 4 * 8 * 16 * 16 * 10 / parts["products"])


def test_the_fused_scan_kernel_is_found_in_a_training_step() -> None:
    """The scan parts name the fused op's autograd Function: a rename would make them silently 0."""
    if _load()[0] is None:
        pytest.skip(f"the cpu scan kernel does not build here: {_load()[1]}")
    net = VMUNetV2(depths=(1, 1, 1, 1), dims=32).train()
    x = torch.randn(2, 3, 64, 64)
    parts = breakdown(lambda: sum(o.sum() for o in net(x)).backward(), repeats=1)
    assert parts["scan_forward"] > 0 and parts["scan_backward"] > 0
