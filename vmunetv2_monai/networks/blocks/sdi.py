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

__all__ = ["ChannelAttention", "LevelProjection", "SDI", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, hidden width ``C // 16``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv7x7([mean_c(x), max_c(x)]))``, one output map."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(stats))


class LevelProjection(nn.Module):
    """``x * CA(x)``, then ``* SA``, then 1x1 conv (no bias) + BatchNorm to ``out_channels`` (no ReLU)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.ca = ChannelAttention(in_channels)
        self.sa = SpatialAttention()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(x) * x
        x = self.sa(x) * x
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Fuse ``num_levels`` maps of ``channels`` channels at the anchor's resolution by a smoothed product."""

    def __init__(self, channels: int, num_levels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_levels))

    def forward(self, xs: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
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
