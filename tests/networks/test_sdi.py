"""SDI's level projection (``vmunetv2_monai.networks.blocks.sdi``): its 1x1 convolution as a product on oneDNN gives
the convolution's values and gradients."""

from __future__ import annotations

import pytest
import torch

from vmunetv2_monai.networks.blocks.sdi import LevelProjection


@pytest.mark.parametrize("threads", [1, 2])
def test_level_projection_on_onednn_equals_its_conv(threads: int) -> None:
    """At 1 thread PyTorch runs a 1x1 convolution at batch < 16 on its slow path, at 2 on oneDNN; the product over
    the channels (channels-last taps, as the encoder's) gives the values and gradients of ``bn(conv(...))``, and the
    convolution module itself is not called."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        proj = LevelProjection(in_channels=32, out_channels=12)
        x = torch.randn(2, 10, 14, 32).permute(0, 3, 1, 2).requires_grad_()  # channels-last (B, C, H, W)
        calls = []
        hook = proj.conv.register_forward_hook(lambda *_: calls.append(1))
        out = proj(x)
        hook.remove()
        assert not calls, "the 1x1 convolution ran instead of the oneDNN product"
        torch.manual_seed(0)
        ref_proj = LevelProjection(in_channels=32, out_channels=12)
        ref = ref_proj.bn(ref_proj.conv(ref_proj.sa(ref_proj.ca(x) * x) * (ref_proj.ca(x) * x)))
        torch.testing.assert_close(out, ref)
        assert out.is_contiguous(memory_format=torch.channels_last)
        dy = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, proj.conv.weight), dy)
        want = torch.autograd.grad(ref, (x, ref_proj.conv.weight), dy)
        for g, w in zip(got, want, strict=True):  # the weight's sum over pixels in another order: rounding apart
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        proj.eval()
        ref_proj.eval()
        with torch.no_grad():
            torch.testing.assert_close(proj(x), ref_proj.bn(ref_proj.conv(
                ref_proj.sa(ref_proj.ca(x) * x) * (ref_proj.ca(x) * x))))
    finally:
        torch.set_num_threads(before)


def test_level_projection_keeps_the_conv_where_onednn_does_not_apply() -> None:
    """float64 input (not taken by the oneDNN product) runs the convolution module."""
    torch.manual_seed(0)
    proj = LevelProjection(in_channels=16, out_channels=8).double()
    calls = []
    proj.conv.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    out = proj(x)
    assert calls == [1]
    assert out.shape == (1, 8, 6, 6)
