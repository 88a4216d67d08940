"""VSS block and VSS layer (stage) of the VMamba v0 encoder used by VM-UNetV2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import DropPath
from torch.utils.checkpoint import checkpoint

from .patch import PatchMerging2D
from .ss2d import SS2D

__all__ = ["VSSBlock", "VSSLayer"]


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(LayerNorm(x)))`` on ``(B, H, W, C)``; no MLP (VMamba v0, MLP ratio 0).

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate of the residual branch. Defaults to 0.0.
        d_state: SSM state size N of the :class:`~vmunetv2_monai.networks.blocks.ss2d.SS2D` mixer. Defaults to 16.
        ssm_ratio: SS2D channel expansion. Defaults to 2.0.
        scan_backend: SS2D's selective-scan backend. Defaults to ``"auto"``.
    """

    def __init__(
        self, dim: int, drop_path: float = 0.0, d_state: int = 16, ssm_ratio: float = 2.0, scan_backend: str = "auto"
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)  # eps 1e-5: the official VSSM passes nn.LayerNorm itself
        self.self_attention = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: channels-last ``(B, H, W, dim)``.

        Returns:
            ``(B, H, W, dim)``.
        """
        branch = self.drop_path(self.self_attention(self.ln_1(x)))
        # into the branch's new output where that keeps x's dtype (under autocast the branch may be narrower)
        return branch.add_(x) if branch.dtype == x.dtype else x + branch


class VSSLayer(nn.Module):
    """``len(drop_path)`` VSS blocks at ``dim`` channels, then an optional 2x2 patch merge to ``2 * dim``.

    Args:
        dim: channels of the blocks.
        drop_path: one stochastic-depth rate per block; its length is the number of blocks.
        downsample: end with a :class:`~vmunetv2_monai.networks.blocks.patch.PatchMerging2D`.
        d_state: SSM state size N of every block. Defaults to 16.
        ssm_ratio: SS2D channel expansion of every block. Defaults to 2.0.
        scan_backend: selective-scan backend of every block. Defaults to ``"auto"``.
        use_checkpoint: gradient checkpointing of each block in eager training. Defaults to False.
    """

    def __init__(
        self,
        dim: int,
        drop_path: Sequence[float],
        downsample: bool,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        scan_backend: str = "auto",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=p, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
            for p in drop_path
        )
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: channels-last ``(B, H, W, dim)``; H and W even when ``downsample``.

        Returns:
            ``(B, H / 2, W / 2, 2 * dim)`` with ``downsample``, else ``(B, H, W, dim)``.
        """
        for blk in self.blocks:
            if self.use_checkpoint and self.training and not torch.jit.is_scripting():
                x = self._checkpointed(blk, x)
            else:
                x = blk(x)
        return x if self.downsample is None else self.downsample(x)

    @torch.jit.unused
    def _checkpointed(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``blk(x)`` with gradient checkpointing (eager training only; a scripted module never takes it)."""
        return checkpoint(blk, x, use_reentrant=False)
