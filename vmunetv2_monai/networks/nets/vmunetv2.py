"""VM-UNetV2 as a MONAI-style network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep

from ...ops.selective_scan import SCAN_BACKENDS
from ..blocks.decoder import VMUNetV2Decoder
from ..blocks.sdi import SDI, LevelProjection
from ..encoders.vssm import VSSMEncoder

__all__ = ["VMUNetV2"]


class VMUNetV2(nn.Module):
    """VM-UNetV2: Vision Mamba UNet v2 for 2D segmentation (Zhang et al., arXiv 2403.09157).

    A VSSM (VMamba v0) encoder, SDI skip fusion (channel + spatial attention, 1x1 conv + BN to
    ``mid_channels``, resize to each level and a smoothed Hadamard product), and a transposed-conv decoder
    whose two finest heads are fused into the output (the official "deep supervision").

    Encoder-tap quirk (as in the official code): the SDI head sees the *inputs* of the four encoder stages,
    so the finest skip is the patch embedding (no Mamba processing) and stage 4 never affects the output.
    ``keep_unused_stage=True`` keeps stage 4's parameters (never run), as the official checkpoint layout does:
    22.73 M parameters for the default config (the official 22.77 M also counts the decoder's never-used
    ``deconv5``, 36,864 parameters, which is not built here); ``False`` drops them (13.82 M, identical outputs).

    Input size: any H and W. Inputs are zero-padded (centred) to multiples of 32 and the logits are cropped
    back, so the output always has the input's H and W (the official code needs multiples of 32).

    Returns logits, never probabilities. In eval mode, or with ``deep_supervision=False``, ``forward``
    returns one tensor ``(B, out_channels, H, W)``. In training mode with ``deep_supervision=True`` it
    returns a list for :class:`monai.losses.DeepSupervisionLoss`: ``[fused, head_1, head_2, head_3, head_4]``
    where ``fused`` (full size) is the eval-mode output, and ``head_i`` are the per-level head logits at
    H, H/2, H/4 and H/8 (finest first; DeepSupervisionLoss resizes the target to each).

    Args:
        spatial_dims: only 2 is supported. Defaults to 2.
        in_channels: input channels (1 for grey, 3 for RGB, any other count works). Defaults to 3.
        out_channels: output channels (1 for binary with sigmoid, C for softmax over C classes). Defaults to 1.
        depths: VSS blocks in the four encoder stages. Defaults to ``(2, 2, 9, 2)``.
        dims: stage channels, doubling at each stage; an int ``d`` means ``(d, 2d, 4d, 8d)``. Defaults to 96.
        d_state: SSM state size N. Defaults to 16.
        ssm_ratio: SS2D channel expansion. Defaults to 2.0.
        mid_channels: channels of the SDI head and decoder. Defaults to 48.
        drop_path_rate: stochastic depth rate over the encoder blocks, in [0, 1). Defaults to 0.2.
        deep_supervision: use the fused two-head output (official default) and return the side outputs in
            training; if False the output is the finest head alone. Defaults to True.
        scan_backend: ``"auto"``, ``"mamba"``, ``"cpu_fused"``, ``"cpu"``, ``"torch"`` or ``"reference"``; see
            :func:`vmunetv2_monai.ops.selective_scan.selective_scan` (``"cpu_fused"``: the SS2D cross-scan, scan
            and merge as one compiled CPU op, what ``"auto"`` picks on CPU). Defaults to ``"auto"``.
        keep_unused_stage: keep the parameters of encoder stage 4 (see above). Defaults to True.
        use_checkpoint: gradient checkpointing of the VSS blocks in training (less memory, more time). Defaults to
            False.

    Raises:
        ValueError: when ``spatial_dims`` is not 2, a channel count, ``depths``, ``dims``, ``d_state`` or
            ``mid_channels`` is not a positive int (``dims`` must double at each stage), ``ssm_ratio <= 0``,
            ``drop_path_rate`` is outside [0, 1), or ``scan_backend`` is unknown.

    Examples::

        >>> net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1).eval()
        >>> net(torch.randn(1, 3, 250, 300)).shape
        torch.Size([1, 1, 250, 300])
    """

    size_divisor = 32
    __constants__ = ["size_divisor"]  # TorchScript reads it as a constant

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: int | Sequence[int] = 96,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        mid_channels: int = 48,
        drop_path_rate: float = 0.2,
        deep_supervision: bool = True,
        scan_backend: str = "auto",
        keep_unused_stage: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"VMUNetV2 supports spatial_dims=2 only, got spatial_dims={spatial_dims}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        depths = tuple(depths)
        if len(depths) != 4 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be 4 positive ints, got {depths!r}.")
        dims = tuple(dims * 2**i for i in range(4)) if isinstance(dims, int) else tuple(ensure_tuple_rep(dims, 4))
        if any(not isinstance(d, int) or d < 1 for d in dims) or any(dims[i + 1] != 2 * dims[i] for i in range(3)):
            raise ValueError(f"dims must be an int or 4 ints that double at each stage, got {dims!r}.")
        for name, value in (("d_state", d_state), ("mid_channels", mid_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if ssm_ratio <= 0:
            raise ValueError(f"ssm_ratio must be > 0, got {ssm_ratio!r}.")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}.")
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {scan_backend!r}.")

        self.in_channels, self.out_channels = in_channels, out_channels
        self.deep_supervision = deep_supervision
        self.encoder = VSSMEncoder(
            in_channels,
            dims,
            depths,
            d_state=d_state,
            ssm_ratio=ssm_ratio,
            drop_path_rate=drop_path_rate,
            scan_backend=scan_backend,
            keep_unused_stage=keep_unused_stage,
            use_checkpoint=use_checkpoint,
        )
        self.projections = nn.ModuleList(LevelProjection(c, mid_channels) for c in dims)
        self.sdi = nn.ModuleList(SDI(mid_channels, num_levels=4) for _ in range(4))
        self.decoder = VMUNetV2Decoder(mid_channels, out_channels, num_levels=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """
        Args:
            x: ``(B, in_channels, H, W)``, any H and W (zero-padded to multiples of 32 inside, cropped back).

        Returns:
            Logits ``(B, out_channels, H, W)``; in training mode with ``deep_supervision=True`` the list
            ``[fused, head_1, head_2, head_3, head_4]`` with ``head_i`` at H, H/2, H/4 and H/8 (rounded up).

        Raises:
            ValueError: when ``x`` is not 4-D or its channel count is not ``in_channels``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"VMUNetV2 expects input (B, {self.in_channels}, H, W), got {list(x.shape)}; "
                "check in_channels and that images are channel-first."
            )
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.size_divisor, (-w) % self.size_divisor
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = F.pad(x, (left, pw - left, top, ph - top))
        taps = self.encoder(x)
        feats = [proj(taps[i]) for i, proj in enumerate(self.projections)]  # finest first
        fused = [sdi(feats, feats[i]) for i, sdi in enumerate(self.sdi)]
        out, heads = self.decoder(fused[::-1])  # decoder takes coarsest first
        region = (x.shape[-1], top, left, h, w)
        if not self.deep_supervision:
            return _crop(heads[0], region)
        if self.training:
            return [_crop(out, region)] + [_crop(t, region) for t in heads]
        return _crop(out, region)


def _crop(t: torch.Tensor, region: tuple[int, int, int, int, int]) -> torch.Tensor:
    """The input's region of a map at stride s: ceil(H / s) x ceil(W / s) from the padded origin.

    ``region`` is ``(padded width, top padding, left padding, H, W)`` of the network input.
    """
    padded_w, top, left, h, w = region
    s = padded_w // t.shape[-1]
    return t[..., top // s : top // s + -(-h // s), left // s : left // s + -(-w // s)]

