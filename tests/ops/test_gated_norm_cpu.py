"""The fused ``out_norm(y) * silu(z)`` of SS2D (``cpu_fused``) against LayerNorm, SiLU and a product in PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vmunetv2_monai.networks.blocks.ss2d as ss2d_module
from tests.conftest import rel_err
from vmunetv2_monai.networks.blocks.ss2d import SS2D
from vmunetv2_monai.ops.selective_scan.cpu import cpu_status
from vmunetv2_monai.ops.selective_scan.gated_norm_cpu import gated_norm_cpu, gated_norm_supported

CPU_OK, CPU_REASON = cpu_status()
pytestmark = pytest.mark.skipif(not CPU_OK, reason=f"cpu scan kernel unavailable: {CPU_REASON}")


def _norm(channels: int, seed: int) -> torch.nn.LayerNorm:
    torch.manual_seed(seed)
    norm = torch.nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


@pytest.mark.parametrize(
    "shape, z_scale",
    [
        ((2, 5, 7, 64), 3.0),  # a block's map, 4 vectors of 16 channels a row
        ((3, 48), 3.0),  # 3 vectors of 16 (6 of 8 in the AVX2 build)
        ((1, 1, 1, 16), 3.0),  # one row, one vector
        ((37, 768), 3.0),  # rows not a multiple of the kernel's 16-row tasks
        ((4, 32), 60.0),  # the gate's sigmoid saturated at both ends: no inf or NaN
    ],
)
def test_matches_pytorch_forward_and_backward(shape, z_scale) -> None:
    norm = _norm(shape[-1], seed=shape[0])
    y = (torch.randn(shape) * 3 + 1).requires_grad_(True)
    z = (torch.randn(shape) * z_scale).requires_grad_(True)
    wrt = [y, z, norm.weight, norm.bias]
    grad_out = torch.randn(shape)
    want = norm(y) * F.silu(z)
    grads_want = torch.autograd.grad(want, wrt, grad_out)
    got = gated_norm_cpu(y, z, norm)
    grads = torch.autograd.grad(got, wrt, grad_out)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert rel_err(got, want) < 1e-5
    for name, g, w in zip(("y", "z", "weight", "bias"), grads, grads_want, strict=True):
        assert g.shape == w.shape and torch.isfinite(g).all(), name
        assert rel_err(g, w) < 1e-5, name


def test_inputs_the_kernel_does_not_take_are_named_unsupported() -> None:
    norm = torch.nn.LayerNorm(32)
    y, z = torch.randn(2, 32), torch.randn(2, 32)
    assert gated_norm_supported(y, z, norm)
    assert not gated_norm_supported(y.double(), z.double(), norm.double())
    assert not gated_norm_supported(torch.randn(2, 40), torch.randn(2, 40), torch.nn.LayerNorm(40))  # not 16k
    assert not gated_norm_supported(y, z[:1], norm)
    assert not gated_norm_supported(y, z, torch.nn.LayerNorm(32, elementwise_affine=False))
    assert not gated_norm_supported(y.reshape(2, 2, 16), z.reshape(2, 2, 16), torch.nn.LayerNorm([2, 16]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gated_norm_supported(y, z, norm)


def test_ss2d_uses_it_on_the_fused_path_only(monkeypatch) -> None:
    calls = []

    def counting(y, z, norm):
        calls.append(tuple(y.shape))
        return gated_norm_cpu(y, z, norm)

    monkeypatch.setattr(ss2d_module, "gated_norm_cpu", counting)
    x = torch.randn(1, 4, 5, 16)
    fused = SS2D(16, d_state=8, scan_backend="cpu_fused")
    ref = SS2D(16, d_state=8, scan_backend="reference")
    ref.load_state_dict(fused.state_dict())
    assert rel_err(fused(x), ref(x)) < 1e-5
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 1e-5  # eval: out of place too, z is left as it was
    assert calls == [(1, 4, 5, fused.d_inner)] * 2
    SS2D(16, d_state=8, scan_backend="cpu")(x)
    assert len(calls) == 2
