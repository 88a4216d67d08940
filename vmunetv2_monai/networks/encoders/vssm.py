"""VSSM encoder (VMamba v0) with VM-UNetV2's feature taps.

Encoder-tap quirk of the official VM-UNetV2 code (kept on purpose): the four features handed to the SDI
head are the *inputs* of the four stages, i.e.

- f1: the patch-embedding output (no Mamba processing), ``dims[0]`` channels at H/4;
- f2, f3, f4: the outputs of stages 1-3 after their patch merging, ``dims[1..3]`` channels at H/8, H/16, H/32.

Stage 4 (``depths[3]`` blocks at ``dims[3]``) therefore never influences the output. The official code still
runs it; here it is never run, and its parameters exist only when ``keep_unused_stage=True`` so that the
checkpoint layout matches the official model (and the network's parameter count is 22.73 M for the default config;
the official 22.77 M also counts the decoder's never-used ``deconv5``, which is not built here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import trunc_normal_

from ..blocks.patch import PatchEmbed2D
from ..blocks.vss_block import VSSLayer

__all__ = ["VSSMEncoder"]


class VSSMEncoder(nn.Module):
    """Patch embedding plus four VSS stages; returns the four taps ``[f1, f2, f3, f4]`` as ``(B, C_i, H_i, W_i)``.

    Args:
        in_channels: input channels.
        dims: channels of the four stages (``dims[i+1] == 2 * dims[i]``).
        depths: VSS blocks per stage.
        d_state: SSM state size N of every SS2D. Defaults to 16.
        ssm_ratio: channel expansion of every SS2D. Defaults to 2.0.
        drop_path_rate: stochastic depth, ``linspace(0, rate, sum(depths))`` over the blocks in order. Defaults to
            0.2.
        scan_backend: selective-scan backend of every SS2D. Defaults to ``"auto"``.
        keep_unused_stage: build stage 4's parameters (never run; see the module docstring). Defaults to True.
        use_checkpoint: gradient checkpointing of each VSS block in training. Defaults to False.

    Attributes:
        out_channels: channels of the four taps, ``dims``.
        reductions: spatial reduction of the four taps, ``(4, 8, 16, 32)``.
    """

    reductions = (4, 8, 16, 32)

    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int],
        depths: Sequence[int],
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        drop_path_rate: float = 0.2,
        scan_backend: str = "auto",
        keep_unused_stage: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = tuple(dims)
        self.patch_embed = PatchEmbed2D(in_channels, dims[0], patch_size=4)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        num_stages = 4 if keep_unused_stage else 3
        self.layers = nn.ModuleList(
            VSSLayer(
                dims[i],
                drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < 3,
                d_state=d_state,
                ssm_ratio=ssm_ratio,
                scan_backend=scan_backend,
                use_checkpoint=use_checkpoint,
            )
            for i in range(num_stages)
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, H, W)`` with H and W multiples of 32.

        Returns:
            The four taps ``(B, dims[i], H / r_i, W / r_i)`` for ``r_i`` in :attr:`reductions`, finest first, in
            channels-last memory (views of the stages' ``(B, H, W, C)`` maps: no copy, and the SDI convolutions
            after them run faster in that layout).
        """
        x = self.patch_embed(x)  # (B, H/4, W/4, dims[0])
        taps = [x]
        for i, layer in enumerate(self.layers):  # stage 4 (if kept) is never run: the taps are stage inputs
            if i < 3:
                x = layer(x)
                taps.append(x)
        return [t.permute(0, 3, 1, 2) for t in taps]


def _init_weights(m: nn.Module) -> None:
    """VSSM's initialisation: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
