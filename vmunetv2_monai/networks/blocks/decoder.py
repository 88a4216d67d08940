"""VM-UNetV2 decoder: transposed-conv upsampling with additive SDI skips, per-level heads, fused output."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VMUNetV2Decoder"]


def _up4(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)


class VMUNetV2Decoder(nn.Module):
    """Decode the fused SDI maps (coarse to fine, ``channels`` each) into logits.

    From the coarsest map up, each finer level adds its map to the 2x transposed-conv upsampling of the coarser
    result; a 1x1 head per level gives ``seg_i`` (``out_channels`` logits), upsampled 4x (bilinear) as ``up4``.
    ``forward`` returns ``(fused, heads)``: ``fused`` is ``up4(seg_finest) + deconv(up4(seg_second_finest))`` at 4x
    the finest map's size (the official deep-supervision output, before its sigmoid); ``heads`` are the per-level
    head logits ``up4(seg_i)`` from finest to coarsest (4x each level's size).

    Args:
        channels: channels of every input map (the SDI width, ``mid_channels`` of the network).
        out_channels: channels of the head logits and of the fused output.
        num_levels: number of input maps (the fused output needs at least 2), each twice the size of the
            coarser one. Defaults to 4.
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
        """
        Args:
            feats: ``num_levels`` maps ``(B, channels, H_i, W_i)``, coarsest first, each twice the size of the one
                before it.

        Returns:
            ``(fused, heads)``: ``fused`` is ``(B, out_channels, 4 * H_f, 4 * W_f)`` for the finest map's size
            ``(H_f, W_f)``; ``heads`` are the ``num_levels`` head logits ``(B, out_channels, 4 * H_i, 4 * W_i)``,
            finest first.
        """
        ys = [feats[0]]  # coarsest first; each finer level adds its skip to the upsampled coarser one
        for i, up in enumerate(self.ups):
            ys.append(up(ys[-1]) + feats[i + 1])
        segs = [head(ys[i]) for i, head in enumerate(self.heads)]
        ups = [_up4(s) for s in segs]
        fused = ups[-1] + self.fuse(ups[-2])
        return fused, ups[::-1]
