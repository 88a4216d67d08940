"""Whole-image inference at the training input size, for models trained on resized whole images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

__all__ = ["ResizeInferer"]


class ResizeInferer(Inferer):
    """Resize each input ``(B, C, *S)`` to ``spatial_size``, run the network, and resize its logits
    ``(B, out_channels, *spatial_size)`` back to ``(B, out_channels, *S)`` (bilinear, ``align_corners=False``:
    the same interpolation as MONAI's ``Resize`` in the training transforms).

    The sliding-window inferer suits models trained on native-resolution patches; this one suits models
    trained on whole images resized to ``spatial_size`` (``spatial_mode resize``), which then see the same field
    of view at inference.

    Args:
        spatial_size: the network's input size ``(H, W)`` (the training ``image_size``).
        mode: ``torch.nn.functional.interpolate`` mode of both resizes. Defaults to ``"bilinear"``.

    Raises:
        ValueError: when ``spatial_size`` is not two positive ints (here), or a batch is not ``(B, C, H, W)``
            (when called).
        TypeError: when called with a network that does not return one tensor (e.g. a deep-supervision network in
            training mode).
    """

    def __init__(self, spatial_size: Sequence[int], mode: str = "bilinear") -> None:
        super().__init__()
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 2 or min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be two positive ints, got {spatial_size!r}")
        self.mode = mode

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """
        Args:
            inputs: batch ``(B, C, H, W)``.
            network: callable returning logits ``(B, out_channels, *spatial_size)`` for a resized batch.
            args: further positional arguments of ``network``.
            kwargs: further keyword arguments of ``network``.

        Returns:
            Logits ``(B, out_channels, H, W)``.
        """
        if inputs.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(inputs.shape)}")
        size = tuple(inputs.shape[2:])
        x = F.interpolate(inputs, size=self.spatial_size, mode=self.mode, align_corners=False)
        out = network(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the network returned {type(out).__name__}; ResizeInferer needs one logits tensor "
                            "(put the network in eval mode)")
        return F.interpolate(out, size=size, mode=self.mode, align_corners=False)
