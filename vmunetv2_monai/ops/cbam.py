"""CBAM's channel then spatial attention of an SDI level (``LevelProjection``) as one autograd Function.

``x2 = SA(x1) * x1`` with ``x1 = CA(x) * x``: CA from the channels' average and maximum over the pixels (a shared
two-layer MLP, sigmoid), SA from the pixels' mean and maximum over the channels (a 7x7 convolution, sigmoid).
Autograd's own backward of these ops broadcasts each pooling's gradient back to a full-size map and adds it; this
backward folds the poolings' gradients into the products' passes (``addcmul`` with the broadcast term as its input).
The small MLP and the convolution are re-run under autograd inside the backward for their own gradients. Maxima
pass their gradient as the modules' do: the pixel maximum to the pooling's index, the channel maximum shared by its
ties (``amax``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cbam", "cbam_supported", "channel_weights", "pixel_weights"]


def cbam_supported(x: torch.Tensor) -> bool:
    """Whether :func:`cbam` takes this map: a floating-point CPU tensor, no CPU autocast, not traced for export.

    Args:
        x: the map ``(B, C, H, W)`` (only its dtype and device are read).

    Returns:
        True when the op applies.
    """
    return (
        x.device.type == "cpu"
        and x.is_floating_point()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
    )


def channel_weights(avg: torch.Tensor, mx: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """CBAM's channel weights ``sigmoid(mlp(avg) + mlp(mx))`` with ``mlp = w2 @ relu(w1 @ .)``, the one definition
    that :class:`~vmunetv2_monai.networks.blocks.sdi.ChannelAttention` and :func:`cbam` both use.

    Args:
        avg: the channels' average over the pixels, ``(B, C)``.
        mx: their maximum over the pixels, ``(B, C)``.
        w1: the MLP's first layer, ``(C', C, 1, 1)`` (a 1x1 convolution's weight, no bias).
        w2: its second layer, ``(C, C', 1, 1)``.

    Returns:
        ``(B, C)`` in (0, 1).
    """
    w1, w2 = w1.flatten(1), w2.flatten(1)
    return torch.sigmoid(F.linear(F.relu(F.linear(avg, w1)), w2) + F.linear(F.relu(F.linear(mx, w1)), w2))


def pixel_weights(stats: torch.Tensor, w_sa: torch.Tensor) -> torch.Tensor:
    """CBAM's pixel weights ``sigmoid(conv(stats))`` ("same" padding, no bias), the one definition that
    :class:`~vmunetv2_monai.networks.blocks.sdi.SpatialAttention` and :func:`cbam` both use.

    Args:
        stats: the pixels' mean and maximum over the channels, stacked, ``(B, 2, H, W)``.
        w_sa: the convolution's weight ``(1, 2, k, k)``, odd k.

    Returns:
        ``(B, 1, H, W)`` in (0, 1).
    """
    return torch.sigmoid(F.conv2d(stats, w_sa, padding=w_sa.shape[-1] // 2))


def _pixel_weights(mean: torch.Tensor, mx: torch.Tensor, w_sa: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """:func:`pixel_weights` of the flat statistics: ``(B, P)`` each (P = H W) -> ``(B, P)``."""
    return pixel_weights(torch.stack([mean, mx], dim=1).view(mean.shape[0], 2, *hw), w_sa).flatten(1)


class _CBAM(torch.autograd.Function):
    """x ``(B, P, C)`` contiguous (a channels-last map's pixels), the MLP's weights w1 ``(C', C, 1, 1)`` and w2
    ``(C, C', 1, 1)``, the 7x7 weight w_sa ``(1, 2, k, k)`` -> x2 ``(B, P, C)``."""

    @staticmethod
    def forward(ctx, x, w1, w2, w_sa, hw):  # type: ignore[override]
        b, n_pix, n_ch = x.shape
        mx, imx = F.adaptive_max_pool2d(x.view(b, *hw, n_ch).permute(0, 3, 1, 2), 1, return_indices=True)
        avg, mx, imx = x.mean(1), mx.view(b, n_ch), imx.view(b, 1, n_ch)
        ca = channel_weights(avg, mx, w1, w2)
        x1 = x * ca.unsqueeze(1)
        smean, smax = x1.mean(2), x1.amax(2)
        s = _pixel_weights(smean, smax, w_sa, hw)
        ctx.hw = hw
        ctx.save_for_backward(x, w1, w2, w_sa, avg, mx, imx, ca, smean, smax, s)
        return x1.mul_(s.unsqueeze(2))

    @staticmethod
    def backward(ctx, g2):  # type: ignore[override]
        x, w1, w2, w_sa, avg, mx, imx, ca, smean, smax, s = ctx.saved_tensors
        n_pix, n_ch = x.shape[1], x.shape[2]
        x1 = x * ca.unsqueeze(1)
        # x2 = x1 * s: the pixel weights' gradient is sum_c g2 x1
        ds = (g2 * x1).sum(2)
        with torch.enable_grad():
            sm, sx, w = smean.detach().requires_grad_(), smax.detach().requires_grad_(), w_sa.detach().requires_grad_()
            d_smean, d_smax, d_wsa = torch.autograd.grad(_pixel_weights(sm, sx, w, ctx.hw), (sm, sx, w), ds)
        # x1's gradient: g2 s, the channel mean's share (broadcast) and the channel maximum's (shared by the ties,
        # as amax's gradient)
        g1 = torch.addcmul((d_smean / n_ch).unsqueeze(2), g2, s.unsqueeze(2))
        at_max = (x1 == smax.unsqueeze(2)).to(x.dtype)
        g1.addcmul_(at_max, (d_smax / at_max.sum(2)).unsqueeze(2))
        # x1 = x * ca: ca's gradient is sum_p g1 x
        dca = (g1 * x).sum(1)
        with torch.enable_grad():
            a, m = avg.detach().requires_grad_(), mx.detach().requires_grad_()
            v1, v2 = w1.detach().requires_grad_(), w2.detach().requires_grad_()
            d_avg, d_mx, d_w1, d_w2 = torch.autograd.grad(channel_weights(a, m, v1, v2), (a, m, v1, v2), dca)
        # x's gradient: g1 ca, the pixel mean's share (broadcast) and the pixel maximum's (the pooling's index)
        dx = torch.addcmul((d_avg / n_pix).unsqueeze(1), g1, ca.unsqueeze(1))
        dx.scatter_add_(1, imx, d_mx.unsqueeze(1))
        return dx, d_w1, d_w2, d_wsa, None


def cbam(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w_sa: torch.Tensor) -> torch.Tensor:
    """``SA(x1) * x1`` with ``x1 = CA(x) * x`` (``LevelProjection``'s attention); the caller checks
    :func:`cbam_supported` first.

    Args:
        x: ``(B, C, H, W)``, best channels-last (the encoder's taps are; another layout is copied once).
        w1: ``(C', C, 1, 1)``, the channel MLP's first layer (no bias).
        w2: ``(C, C', 1, 1)``, its second layer (no bias).
        w_sa: ``(1, 2, k, k)``, the spatial attention's convolution (no bias, odd k).

    Returns:
        ``(B, C, H, W)``, channels-last.
    """
    b, c, h, w = x.shape
    x2 = _CBAM.apply(x.permute(0, 2, 3, 1).reshape(b, h * w, c), w1, w2, w_sa, (h, w))
    return x2.view(b, h, w, c).permute(0, 3, 1, 2)
