"""MapTransforms the bundle needs beyond MONAI's: image loading that reads every common PNG/JPEG mode as its
colours and refuses TIFFs it cannot read as one 2-D image (:func:`check_tiff`), channel count adaptation and mask
binarisation."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from typing import Any

import monai.transforms
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import MapTransform
from PIL import Image

__all__ = [
    "MAX_LABELS", "TIFF_SUFFIXES", "BinarizeMaskd", "EnsureChannelsd", "LoadImaged", "binarize_mask", "check_tiff",
    "pil_standard_mode",
]

logger = logging.getLogger(__name__)

#: Largest value of an unsigned 16-bit image; such images are scaled from [0, this] to [0, 255].
_UINT16_MAX = 65535.0

#: Largest value of 12-bit data: a 16-bit image that stays within it reads dark after the 16-bit scaling.
_UINT12_MAX = 4095

#: Files already warned about as 12-bit data in a 16-bit file (one WARNING per file and process).
_WARNED_12BIT: set[str] = set()


def _warn_12bit(img: torch.Tensor, source: str) -> None:
    """Log a WARNING, once per file, when an integer image's values lie in (255, 4095]: 12-bit data stored in 16
    bit, which the 16-bit scaling maps to 0-16 of 255 (nearly black with the bundle's ``intensity fixed``)."""
    if img.is_floating_point() or not img.numel() or source in _WARNED_12BIT:
        return
    high = int(img.max())
    if 255 < high <= _UINT12_MAX and int(img.min()) >= 0:
        _WARNED_12BIT.add(source)
        logger.warning("%s: a 16-bit image whose largest value is %d (12-bit data?) is scaled from 0-65535 and reads "
                       "as 0-%.1f of 255, nearly black with intensity 'fixed': use --intensity minmax for such data",
                       source, high, high * 255.0 / _UINT16_MAX)


def _source(data: Mapping, key: Hashable) -> str:
    meta = getattr(data[key], "meta", {})
    return str(meta.get("filename_or_obj", key))


#: Suffixes of TIFF files, checked by :func:`check_tiff` before they are read.
TIFF_SUFFIXES = (".tif", ".tiff")


def check_tiff(path: str | os.PathLike) -> None:
    """Check that a TIFF file is one 2-D page the readers agree on. Reads the TIFF's page headers only.

    Args:
        path: the TIFF file.

    Raises:
        ValueError: naming ``path`` for a file that is not a readable TIFF, a multi-page TIFF (PIL would read page
            1 and ITK all pages as a 3-D volume, which fails in the network after the pre-check), or a float image
            with more than one sample per pixel (float RGB: neither PIL nor ITK's Python wrapping reads it).
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages, first = len(tif.pages), tif.pages.first
            kind = first.dtype.kind if first.dtype is not None else ""
            samples, bits = first.samplesperpixel, first.bitspersample
    except tifffile.TiffFileError as err:
        raise ValueError(f"{path}: not a readable TIFF file: {err}") from err
    if pages > 1:
        raise ValueError(f"{path}: a multi-page TIFF ({pages} pages); the bundle reads one 2-D image per file: save "
                         "the page to segment as its own file (e.g. PIL: Image.open(path).save('page1.tif'))")
    if kind == "f" and samples > 1:
        raise ValueError(f"{path}: a floating-point TIFF with {samples} samples per pixel ({bits}-bit float RGB) is "
                         "not supported: save it as 8- or 16-bit integer RGB, or as one float channel")


def pil_standard_mode(img: Image.Image) -> Image.Image:
    """Bring a PIL image to a mode whose array is its colours (the converter of the bundle's ``PILReader``).

    Args:
        img: a PIL image.

    Returns:
        CMYK, YCbCr, LAB and HSV converted to RGB; palette images to RGB (RGBA when they have transparency);
        grey+alpha to grey (alpha is dropped, as for RGBA); 1-bit to 0/255 grey. Other modes (L, RGB, RGBA, 16-bit
        I;16, I, F) are returned unchanged.
    """
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
    fixed intensity range fits them. Every output is float32. A file holding NaN or infinite values (a float TIFF,
    NIfTI, NRRD) is refused with a ``ValueError`` naming it and the count: no replacement value is right for every
    image, and one NaN would spread through the intensity scaling and the network to the whole mask. A multi-page or
    float RGB TIFF is refused by :func:`check_tiff`. EXIF orientation is not applied: pixels are read as stored.
    An integer image whose values lie in (255, 4095] (12-bit data in a 16-bit file) is scaled like any 16-bit image
    and read nearly black with ``intensity fixed``: a WARNING names the file once and advises ``intensity minmax``.

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
        for key in self.key_iterator(dict(data)):
            if isinstance(data[key], (str, os.PathLike)) and os.fspath(data[key]).lower().endswith(TIFF_SUFFIXES):
                check_tiff(data[key])
        d = super().__call__(data, reader)
        for key in self.key_iterator(d):
            if key == self.image_key:
                _warn_12bit(d[key], _source(d, key))
            d[key] = _scale_16bit(d[key]) if key == self.image_key else d[key].float()
            bad = int((~torch.isfinite(d[key])).sum())
            if bad:
                raise ValueError(f"{_source(d, key)}: {bad} of {d[key].numel()} values are NaN or infinite; replace "
                                 "them (e.g. with 0) or leave the file out")
        return d


class EnsureChannelsd(MapTransform):
    """Make a channel-first image ``(C, *spatial)`` have ``channels`` channels: grey is repeated to RGB (or to any
    ``channels``), an alpha channel is dropped (grey+alpha and RGBA), RGB is averaged to grey when ``channels=1``.
    Any other combination raises a ``ValueError`` naming the file.

    Args:
        keys: image keys.
        channels: the network's input channels. Defaults to 3.
        allow_missing_keys: don't raise for missing keys.
    """

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


#: Largest value of an integer mask read as a label mask (0 background, 1..this lesion labels): index masks and 0/1
#: masks saved as JPEG, whose artefacts reach 2-3.
MAX_LABELS = 15

#: The scales of masks beyond 0/1 and labels, smallest first: percent, 8 bit, 16 bit.
_MASK_SCALES = (100.0, 255.0, _UINT16_MAX)


def binarize_mask(
    mask: torch.Tensor, threshold: float = 127.0, max_labels: int = MAX_LABELS, source: str = "mask"
) -> torch.Tensor:
    """The lesion of a channel-first mask (the mask rule).

    The colour channels count, an alpha channel (grey+alpha, RGBA) does not; a pixel's value is its largest colour
    channel, so white, red or any bright colour on black is lesion. The mask's largest value ``m`` picks its scale:

    - ``m <= 1``: 0/1 masks and [0, 1] probabilities, scale 1;
    - integer values with ``m <= max_labels``: label masks (0 background, every label 1..``max_labels`` lesion; 0/1
      masks saved as JPEG, whose artefacts reach 2-3), scale 1;
    - otherwise the smallest of 100 (soft 0-100 masks), 255 (8-bit: 0/255, JPEG, colour) and 65535 (16-bit) that
      holds ``m``.

    A pixel is lesion when its value is above ``threshold / 255`` of the scale (127 of 255, 0.498 of 1, 49.8 of
    100). A mask that cannot be read this way is refused with a ``ValueError`` naming ``source``: non-finite or
    negative values, values above 65535, or non-zero values none of which reaches the threshold (e.g. integer
    labels up to 40, a soft mask that never passes 50 %, 0/1000 in 16 bit), which would otherwise train on an
    empty mask.

    Args:
        mask: ``(C, *spatial)``, any value scale.
        threshold: the lesion threshold on the 8-bit scale. Defaults to 127.0.
        max_labels: the largest value of an integer mask read as labels. Defaults to :data:`MAX_LABELS`.
        source: the mask's name in errors (its file). Defaults to ``"mask"``.

    Returns:
        Boolean lesion mask ``(1, *spatial)``.

    Raises:
        ValueError: naming ``source`` for a mask that cannot be read this way (see above).
    """
    colour = mask[:3] if mask.shape[0] == 4 else mask[:1] if mask.shape[0] == 2 else mask
    peak = colour.float().amax(dim=0, keepdim=True)
    if peak.numel() == 0:
        return peak > 0
    if not bool(torch.isfinite(peak).all()):
        raise ValueError(f"{source}: the mask holds {int((~torch.isfinite(peak)).sum())} NaN or infinite value(s)")
    low, high = float(peak.min()), float(peak.max())
    if low < 0:
        raise ValueError(f"{source}: the mask has negative values (down to {low:g}); a mask holds 0 for background "
                         "and positive values for lesion")
    if high <= 1.0 or (high <= max_labels and bool((peak == peak.round()).all())):
        scale = 1.0
    else:
        scale = next((s for s in _MASK_SCALES if high <= s), None)
        if scale is None:
            raise ValueError(f"{source}: the mask's largest value {high:g} is above 65535; use 0/1, 0/255 or labels")
    lesion = peak > threshold / 255.0 * scale
    if high > 0 and not bool(lesion.any()):
        raise ValueError(
            f"{source}: ambiguous mask: its values reach {high:g} but none is above the lesion threshold "
            f"{threshold / 255.0 * scale:g} of its scale 0-{scale:g}; save the mask as 0/1, 0/255 or as labels "
            f"0..{max_labels} (0 background)")
    return lesion


class BinarizeMaskd(MapTransform):
    """Turn a mask of any channel count and value scale into one binary float channel with :func:`binarize_mask`
    (the mask rule): 0/1, 0/255, colour, JPEG (also 0/1 JPEG), label {0, 1, 2, ...}, soft 0-100 and 16-bit masks
    are read as their lesion; ambiguous masks are refused with a ``ValueError`` naming the file.

    Args:
        keys: mask keys; each ``(C, *spatial)`` -> ``(1, *spatial)`` float32 0/1.
        threshold: the lesion threshold on the 8-bit scale; other scales use the same fraction (``threshold / 255``).
        max_labels: the largest value of an integer mask read as labels (every label above 0 is lesion).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self, keys: KeysCollection, threshold: float = 127.0, max_labels: int = MAX_LABELS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= threshold < 255.0:
            raise ValueError(f"bad mask threshold {threshold!r} ('mask_threshold' in the bundle configs): expected a "
                             "number in [0, 255) on the 8-bit scale")
        self.threshold = threshold
        self.max_labels = max_labels

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lesion = binarize_mask(d[key], self.threshold, self.max_labels, source=_source(d, key))
            d[key] = lesion.to(torch.float32)
        return d
