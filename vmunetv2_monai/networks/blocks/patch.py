"""Patch embedding and patch merging of the VSSM encoder (channels-last ``(B, H, W, C)`` layout)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops.linear_cpu import linear_cpu

__all__ = ["PatchEmbed2D", "PatchMerging2D"]


class PatchEmbed2D(nn.Module):
    """Non-overlapping ``patch_size`` convolution then LayerNorm: ``(B, C_in, H, W)`` -> ``(B, H/p, W/p, C)``.

    Args:
        in_channels: input channels ``C_in``.
        embed_dim: output channels ``C``.
        patch_size: patch edge ``p`` (kernel and stride of the convolution). Defaults to 4.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)``; H and W should be multiples of ``patch_size`` (the convolution drops a
                remainder).

        Returns:
            Channels-last ``(B, H // patch_size, W // patch_size, embed_dim)``.
        """
        # A channels-last input gives a channels-last output, so the permute is a contiguous view and LayerNorm makes
        # no copy of the map (the input, of C_in channels, is the smaller copy)
        return self.norm(self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """Swin-style 2x2 merge: ``(B, H, W, C)`` -> ``(B, H/2, W/2, 2C)`` (H and W must be even).

    The 2x2 neighbours are concatenated in the order (0,0), (1,0), (0,1), (1,1) of (row, column) offsets,
    normalised with LayerNorm(4C) and projected by a bias-free Linear(4C, 2C).

    Args:
        dim: input channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: channels-last ``(B, H, W, dim)`` with even H and W.

        Returns:
            ``(B, H / 2, W / 2, 2 * dim)``.

        Raises:
            ValueError: when H or W is odd.
        """
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"PatchMerging2D needs even H and W, got {list(x.shape[1:3])}.")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        if torch.jit.is_scripting():
            return self.reduction(self.norm(x))
        return self._reduce(self.norm(x))

    @torch.jit.unused
    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The bias-free ``reduction``, ``(..., 4 dim)`` -> ``(..., 2 dim)``: on oneDNN for float32 CPU tensors
        (:func:`~vmunetv2_monai.ops.linear_cpu.linear_cpu`, as SS2D's projections on the ``cpu_fused`` path; MKL's
        sgemm took a narrower path on AMD CPUs), ``F.linear`` elsewhere."""
        return linear_cpu(x, self.reduction.weight)
