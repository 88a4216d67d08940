"""SDI (Semantics and Detail Infusion) skip fusion of U-Net v2, as used by VM-UNetV2.

Peng et al., "U-Net v2: Rethinking the Skip Connections of U-Net for Medical Image Segmentation",
arXiv 2311.17791. Each level's feature is refined by CBAM channel then spatial attention and projected to
``mid_channels`` (``LevelProjection``); ``SDI`` then resizes every level to one target level, smooths each
with a 3x3 convolution and multiplies them (Hadamard product). Unlike the official code, the target size is
the anchor's (H, W), so non-square inputs work.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.cbam import cbam, cbam_supported, channel_weights, pixel_weights
from ...ops.linear_cpu import linear_cpu, linear_cpu_supported

__all__ = ["ChannelAttention", "LevelProjection", "SDI", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, one weight per channel.

    The shared MLP is two bias-free 1x1 convolutions with a ReLU between them.

    Args:
        channels: channels C of the input.
        reduction: the MLP's hidden width is ``max(1, C // reduction)``. Defaults to 16.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, channels, H, W)``.

        Returns:
            Channel weights in (0, 1), ``(B, channels, 1, 1)``.
        """
        avg, mx = F.adaptive_avg_pool2d(x, 1).flatten(1), F.adaptive_max_pool2d(x, 1).flatten(1)
        return channel_weights(avg, mx, self.fc1.weight, self.fc2.weight)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv([mean_c(x), max_c(x)]))``, one weight per pixel.

    Args:
        kernel_size: kernel of the bias-free convolution over the two channel statistics (odd, "same" padding).
            Defaults to 7.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, H, W)``.

        Returns:
            Pixel weights in (0, 1), ``(B, 1, H, W)``.
        """
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return pixel_weights(stats, self.conv1.weight)


class LevelProjection(nn.Module):
    """One SDI level's input: ``x * CA(x)``, then ``* SA``, then 1x1 conv (no bias) + BatchNorm (no ReLU).

    Args:
        in_channels: channels of the encoder feature.
        out_channels: channels after the projection (the SDI width).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ca = ChannelAttention(in_channels)
        self.sa = SpatialAttention()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, out_channels, H, W)``.
        """
        if torch.jit.is_scripting():
            return self.bn(self.conv(self._attend_modules(x)))
        return self.bn(self._project(self._attend(x)))

    def _attend_modules(self, x: torch.Tensor) -> torch.Tensor:
        """``SA(x1) * x1`` with ``x1 = CA(x) * x`` on the attention modules, ``(B, in_channels, H, W)``."""
        x = self.ca(x) * x
        return self.sa(x) * x

    @torch.jit.unused
    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_attend_modules` as one autograd Function on CPU tensors (:func:`~vmunetv2_monai.ops.cbam.cbam`, a
        backward with fewer passes over the map), the modules elsewhere."""
        if cbam_supported(x):
            return cbam(x, self.ca.fc1.weight, self.ca.fc2.weight, self.sa.conv1.weight)
        return self._attend_modules(x)

    @torch.jit.unused
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """The bias-free 1x1 ``conv``, ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``: as a product over
        the channels on oneDNN (:func:`~vmunetv2_monai.ops.linear_cpu.linear_cpu`) for float32 CPU tensors, where
        the same values come out; ``conv`` elsewhere. PyTorch runs a 1x1 convolution on one thread at batch < 16 on
        its slow path (MKL's sgemm after a copy): about 3x as long at stage 1 (``docs/performance.md``). The encoder's
        taps are channels-last, so the permuted view is contiguous and the result is channels-last too."""
        weight = self.conv.weight
        if not linear_cpu_supported(x, weight.flatten(1)):
            return self.conv(x)
        return linear_cpu(x.permute(0, 2, 3, 1), weight.flatten(1)).permute(0, 3, 1, 2)


class SDI(nn.Module):
    """Fuse ``num_levels`` maps of ``channels`` channels at the anchor's resolution by a smoothed product.

    Each map is brought to the anchor's (H, W), by average pooling when it is larger and bilinear interpolation
    (``align_corners=True``) when it is smaller, smoothed by its own 3x3 convolution, and the results are
    multiplied elementwise.

    Args:
        channels: channels of every map.
        num_levels: number of maps fused. Defaults to 4.
    """

    def __init__(self, channels: int, num_levels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_levels))

    def forward(self, xs: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        """
        Args:
            xs: ``num_levels`` maps ``(B, channels, H_i, W_i)`` whose sizes differ from the anchor's by powers of
                two.
            anchor: the level whose size ``(H, W)`` the output takes, ``(B, channels, H, W)`` (only its shape,
                dtype and device are used).

        Returns:
            ``(B, channels, H, W)``.
        """
        size = anchor.shape[-2:]
        ans = torch.ones_like(anchor)
        for i, conv in enumerate(self.convs):
            x = xs[i]
            if x.shape[-1] > size[-1]:
                # Levels differ by exact powers of two: plain average pooling (exportable, unlike adaptive pooling).
                x = F.avg_pool2d(x, kernel_size=x.shape[-1] // size[-1])
            elif x.shape[-1] < size[-1]:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            ans = ans * conv(x)
        return ans
