"""Batched augmentation and normalisation on tensors (one pass per batch instead of per-sample transforms)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BatchAugment", "normalize_batch"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_batch(images: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 or [0, 1] float ``(B, C, H, W)`` -> float32: ``"unit"`` keeps [0, 1], ``"imagenet"`` subtracts the
    ImageNet mean and divides by its std per channel (3-channel images only)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if mode == "unit":
        return x
    if mode == "imagenet":
        if x.shape[1] != 3:
            raise ValueError(f"normalisation 'imagenet' needs 3 channels, got {x.shape[1]}")
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std
    raise ValueError(f"unknown normalisation {mode!r}: use 'unit' or 'imagenet'")


class BatchAugment:
    """Random flips, rotation (+ isotropic scale) and colour jitter, drawn per sample.

    Args:
        flips: horizontal and vertical flips, each with probability 0.5.
        rotate_prob: probability of a rotation by an angle uniform in [-pi, pi] (the bundle's ``RandRotated``).
        scale: ``s`` draws a zoom factor uniform in [1 - s, 1 + s] with the rotation (0: none).
        color: ``c`` draws brightness, contrast and saturation factors uniform in [1 - c, 1 + c] (0: none).
        generator: the random source (seeded by the trainer).

    ``__call__(images, masks)`` takes float images in [0, 1] ``(B, C, H, W)`` and float masks ``(B, 1, H, W)``
    and returns both augmented (image bilinear, mask nearest, zero padding as the bundle's rotation).
    """

    def __init__(self, flips: bool = True, rotate_prob: float = 0.5, scale: float = 0.0, color: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        self.flips, self.rotate_prob, self.scale, self.color = flips, rotate_prob, scale, color
        self.g = generator

    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.g)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        if self.flips:
            for dim in (2, 3):
                sel = self._rand(b) < 0.5
                images[sel] = images[sel].flip(dim)
                masks[sel] = masks[sel].flip(dim)
        if self.rotate_prob > 0 or self.scale > 0:
            angle = (self._rand(b) * 2 - 1) * math.pi * (self._rand(b) < self.rotate_prob)
            zoom = 1 + (self._rand(b) * 2 - 1) * self.scale
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1),
                                 torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if self.color > 0:
            def factor() -> torch.Tensor:
                return (1 + (self._rand(b) * 2 - 1) * self.color).view(b, 1, 1, 1)

            images = images * factor()
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * factor() + mean
            grey = images.mean(dim=1, keepdim=True)
            images = ((images - grey) * factor() + grey).clamp(0, 1)
        return images, masks
