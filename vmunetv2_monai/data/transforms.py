"""MapTransforms the bundle needs beyond MONAI's: image loading that reads every common PNG/JPEG mode as its
colours, channel count adaptation and mask binarisation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import monai.transforms
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import MapTransform
from PIL import Image

__all__ = ["BinarizeMaskd", "EnsureChannelsd", "LoadImaged", "pil_standard_mode"]

#: Largest value of an unsigned 16-bit image; such images are scaled from [0, this] to [0, 255].
_UINT16_MAX = 65535.0


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {})
    return str(meta.get("filename_or_obj", key))


def pil_standard_mode(img: Image.Image) -> Image.Image:
    """Bring a PIL image to a mode whose array is its colours: CMYK, YCbCr, LAB and HSV to RGB; palette images to
    RGB (RGBA when they have transparency); grey+alpha to grey (alpha is dropped, as for RGBA); 1-bit to 0/255
    grey. Other modes (L, RGB, RGBA, 16-bit I;16, I, F) are returned unchanged."""
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "1"):
        return img.convert("L")
    return img


def _scale_16bit(img: torch.Tensor) -> torch.Tensor:
    """Float32 image; a non-negative integer image with values above 255 (16-bit) is mapped [0, 65535] -> [0, 255]."""
    if not img.is_floating_point() and img.numel() and int(img.min()) >= 0 and int(img.max()) > 255:
        return img.float() * (255.0 / _UINT16_MAX)
    return img.float()


class LoadImaged(monai.transforms.LoadImaged):
    """MONAI's ``LoadImaged`` with PNG/JPEG/BMP read through :func:`pil_standard_mode` (so CMYK JPEGs, palette and
    grey+alpha PNGs keep their look) and 16-bit images under ``image_key`` scaled to [0, 255], so the bundle's
    fixed intensity range fits them. Every output is float32.

    Args:
        keys: keys to load.
        image_key: the key whose 16-bit values are rescaled (masks are only cast: 0/1 or 0/65535 masks stay so).
        kwargs: ``monai.transforms.LoadImaged`` arguments (``image_only`` defaults to True; ``dtype`` is not
            accepted, the output is float32).
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", **kwargs: Any) -> None:
        kwargs.setdefault("image_only", True)
        super().__init__(keys, dtype=None, **kwargs)
        self.register(PILReader(converter=pil_standard_mode))  # registered last, so PNG/JPEG/BMP go through it
        self.image_key = image_key

    def __call__(self, data: Mapping, reader: Any = None) -> dict:
        d = super().__call__(data, reader)
        for key in self.key_iterator(d):
            d[key] = _scale_16bit(d[key]) if key == self.image_key else d[key].float()
        return d


class EnsureChannelsd(MapTransform):
    """Make a channel-first image have ``channels`` channels: grey is repeated to RGB, an alpha channel is dropped
    (grey+alpha and RGBA), RGB is averaged to grey when ``channels=1``. Any other combination is an error naming
    the file."""

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if c == 4 and self.channels in (1, 3):
                img, c = img[:3], 3
            elif c == 2 and self.channels in (1, 3):
                img, c = img[:1], 1
            if c == self.channels:
                d[key] = img
            elif c == 1:
                d[key] = img.repeat(self.channels, *([1] * (img.ndim - 1)))
            elif c == 3 and self.channels == 1:
                d[key] = img.float().mean(dim=0, keepdim=True)
            else:
                raise ValueError(f"{_source(d, key)}: image has {c} channels, the network expects {self.channels}")
        return d


class BinarizeMaskd(MapTransform):
    """Turn a mask of any channel count into one binary float channel.

    An alpha channel is dropped (grey+alpha, RGBA); the lesion is where any colour channel exceeds ``threshold``
    (127, for 8-bit masks), or 0.5 when the mask's maximum is at most 1 (masks stored as 0/1). So white, red or any
    other bright colour on black is lesion, and JPEG masks work.
    """

    def __init__(self, keys: KeysCollection, threshold: float = 127.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            c = mask.shape[0]
            colour = mask[:3] if c == 4 else mask[:1] if c == 2 else mask
            peak = colour.float().amax(dim=0, keepdim=True)
            thr = 0.5 if float(peak.max()) <= 1.0 else self.threshold
            d[key] = (peak > thr).to(torch.float32)
        return d
