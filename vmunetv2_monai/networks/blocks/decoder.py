"""VM-UNetV2 decoder: transposed-conv upsampling with additive SDI skips, per-level heads, fused output."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VMUNetV2Decoder"]


def _up4(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


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

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ys = [feats[0]]  # coarsest first; each finer level adds its skip to the upsampled coarser one
        for i, up in enumerate(self.ups):
            ys.append(up(ys[-1]) + feats[i + 1])
        segs = [head(ys[i]) for i, head in enumerate(self.heads)]
        ups = [_up4(s) for s in segs]
        fused = ups[-1] + self.fuse(ups[-2])
        return fused, ups[::-1]
