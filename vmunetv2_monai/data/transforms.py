"""Small MapTransforms the bundle needs beyond MONAI's: channel count adaptation and mask binarisation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["BinarizeMaskd", "EnsureChannelsd"]


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {})
    return str(meta.get("filename_or_obj", key))


class EnsureChannelsd(MapTransform):
    """Make a channel-first image have ``channels`` channels: grey is repeated to RGB, an alpha channel is dropped,
    RGB is averaged to grey when ``channels=1``. Any other combination is an error naming the file."""

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

    Channels are averaged (JPEG masks are often 3-channel), then thresholded at ``threshold`` (127, for 8-bit masks)
    or at 0.5 when the mask's maximum is at most 1 (masks stored as 0/1).
    """

    def __init__(self, keys: KeysCollection, threshold: float = 127.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            grey = mask.float().mean(dim=0, keepdim=True) if mask.shape[0] > 1 else mask.float()
            thr = 0.5 if float(grey.max()) <= 1.0 else self.threshold
            d[key] = (grey > thr).to(torch.float32)
        return d
