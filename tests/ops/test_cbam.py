"""CBAM's attention as one autograd Function (``vmunetv2_monai.ops.cbam``): the values and gradients of the
ChannelAttention and SpatialAttention modules, ties included."""

from __future__ import annotations

import pytest
import torch

import vmunetv2_monai.networks.blocks.sdi as sdi
from vmunetv2_monai.networks.blocks.sdi import ChannelAttention, LevelProjection, SpatialAttention
from vmunetv2_monai.ops.cbam import cbam, cbam_supported


def _modules(x: torch.Tensor, ca: ChannelAttention, sa: SpatialAttention) -> torch.Tensor:
    x1 = ca(x) * x
    return sa(x1) * x1


def _params(ca: ChannelAttention, sa: SpatialAttention) -> tuple[torch.Tensor, ...]:
    return ca.fc1.weight, ca.fc2.weight, sa.conv1.weight


def test_cbam_gradcheck_float64() -> None:
    """Analytic against numerical gradients of the map and the three weights (a non-square map)."""
    torch.manual_seed(0)
    ca, sa = ChannelAttention(32).double(), SpatialAttention().double()
    x = torch.randn(2, 6, 5, 32, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
    assert torch.autograd.gradcheck(cbam, (x, *_params(ca, sa)))


@pytest.mark.parametrize("channels_last", [True, False])
def test_cbam_equals_the_modules(channels_last: bool) -> None:
    """float32 values and gradients of the modules, for a channels-last map (the encoder's taps) and a plain one.
    The gradients are sums over the map taken in another order: the tolerance is float32 rounding at each
    gradient's own scale (both differ from float64 by about 3e-7 of it)."""
    torch.manual_seed(1)
    ca, sa = ChannelAttention(48), SpatialAttention()
    x = torch.randn(3, 9, 7, 48).permute(0, 3, 1, 2) if channels_last else torch.randn(3, 48, 9, 7)
    x.requires_grad_()
    got, want = cbam(x, *_params(ca, sa)), _modules(x, ca, sa)
    torch.testing.assert_close(got, want)
    dy = torch.randn_like(want)
    inputs = (x, *_params(ca, sa))
    for g, w in zip(torch.autograd.grad(got, inputs, dy), torch.autograd.grad(want, inputs, dy), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * w.abs().max().item())


def test_cbam_shares_a_tied_channel_maximum_as_amax() -> None:
    """Two channels equal to the pixel's maximum share its gradient, as the modules' amax does (a one-index maximum
    would give it all to one of them)."""
    torch.manual_seed(2)
    ca, sa = ChannelAttention(16).double(), SpatialAttention().double()
    with torch.no_grad():  # equal channel weights, so equal inputs stay equal after the channel attention
        ca.fc2.weight.zero_()
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    x[..., 3] = x[..., 5] = x.amax(-1) + 1.0
    x = x.permute(0, 3, 1, 2).requires_grad_()
    dy = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    got = torch.autograd.grad(cbam(x, *_params(ca, sa)), x, dy)[0]
    want = torch.autograd.grad(_modules(x, ca, sa), x, dy)[0]
    torch.testing.assert_close(got, want)


def test_level_projection_uses_the_op_on_cpu_and_the_modules_where_it_does_not_apply(monkeypatch) -> None:
    """LevelProjection calls the op for CPU maps; with the op ruled out it runs the modules, with the same result."""
    torch.manual_seed(3)
    proj = LevelProjection(24, 8)
    x = torch.randn(2, 8, 8, 24).permute(0, 3, 1, 2).requires_grad_()
    assert cbam_supported(x)
    calls = []
    proj.ca.register_forward_hook(lambda *_: calls.append(1))
    out = proj(x)
    assert not calls, "the attention modules ran instead of the op"
    monkeypatch.setattr(sdi, "cbam_supported", lambda _: False)
    ref = proj(x)
    assert calls == [1]
    torch.testing.assert_close(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cbam_supported(x)
