"""VM-UNetV2 decoder: transposed-conv upsampling with additive SDI skips, per-level heads, fused output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VMUNetV2Decoder"]


def _up4(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


class VMUNetV2Decoder(nn.Module):
    """Decode the four fused SDI maps (coarse to fine, ``channels`` each) into logits.

    ``forward`` returns ``(fused, heads)``: ``fused`` is ``up4(seg3) + deconv(up4(seg2))`` at 4x the finest
    map's size (the official deep-supervision output, before its sigmoid); ``heads`` are the four per-level
    head logits ``up4(seg_i)`` from finest to coarsest (4x each level's size).
    """

    def __init__(self, channels: int, out_channels: int, num_levels: int = 4) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(channels, out_channels, 1) for _ in range(num_levels))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False) for _ in range(num_levels - 1)
        )
        # The official deconv6 is 1 -> 1 channel; here it maps out_channels -> out_channels (same for one class).
        self.fuse = nn.ConvTranspose2d(out_channels, out_channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = feats[0]
        segs = [self.heads[0](y)]
        for up, skip, head in zip(self.ups, feats[1:], self.heads[1:]):
            y = up(y) + skip
            segs.append(head(y))
        ups = [_up4(s) for s in segs]
        fused = ups[-1] + self.fuse(ups[-2])
        return fused, ups[::-1]
