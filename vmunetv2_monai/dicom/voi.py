"""Greyscale VOI (DICOM PS3.3 C.11.2): the one fixed transform of a greyscale series from modality values to
[0, 1], applied by pydicom's :func:`~pydicom.pixels.apply_voi_lut` after its modality LUT: a configured window, the
image's VOI LUT Sequence, its window with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), or the full stored
range."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

__all__ = ["VOI_FUNCTIONS", "GreyWindow", "greyscale_to_unit", "grey_window"]


#: VOI LUT Functions (PS3.3 C.11.2.1.3) that pydicom's windowing implements.
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

#: Output range of the windows applied here: pydicom scales a window's output to the modality output range of the
#: dataset it is given, and the window dataset built here is unsigned 16-bit without a rescale, so [0, 2**16 - 1].
_WINDOW_TOP = float(2**16 - 1)


@dataclass(frozen=True)
class GreyWindow:
    """The VOI transform of a greyscale series (DICOM PS3.3 C.11.2), applied after the modality LUT by pydicom's
    :func:`~pydicom.pixels.apply_voi_lut`: a window (``center``, ``width`` and the VOI LUT Function ``function``:
    LINEAR, LINEAR_EXACT or SIGMOID) or, with ``lut_source``, the first item of that image's VOI LUT Sequence.

    Args:
        center: Window Center in modality units (None for a VOI LUT).
        width: Window Width in modality units (None for a VOI LUT).
        origin: where the transform comes from, as recorded in the SEG ("configured", "image
            WindowCenter/WindowWidth", "image VOI LUT Sequence", "full 12-bit stored range").
        function: the VOI LUT Function of the window.
        lut_source: the image whose first VOI LUT Sequence item is the transform (its file meta tells pydicom the
            byte order of OW LUT data).
    """

    center: float | None
    width: float | None
    origin: str
    function: str = "LINEAR"
    lut_source: Dataset | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """How the transform is recorded in the SEG's algorithm parameters.

        Returns:
            e.g. ``"center 40 width 400 (image WindowCenter/WindowWidth)"``, ``"center 40 width 400 SIGMOID (...)"``,
            ``"VOI LUT 4096 entries from 0, 16 bits, 'SOFT TISSUE' (image VOI LUT Sequence)"``.
        """
        if self.lut_source is not None:
            item = self.lut_source.VOILUTSequence[0]
            entries, first, bits = (int(v) for v in item.LUTDescriptor)
            explanation = f", {str(item.LUTExplanation)!r}" if item.get("LUTExplanation") else ""
            return f"VOI LUT {entries or 2**16} entries from {first}, {bits} bits{explanation} ({self.origin})"
        function = "" if self.function == "LINEAR" else f" {self.function}"
        return f"center {self.center:g} width {self.width:g}{function} ({self.origin})"

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Modality values -> [0, 1] through :func:`~pydicom.pixels.apply_voi_lut`.

        Args:
            values: ``(H, W)`` output of the modality LUT.

        Returns:
            ``(H, W)`` float64 in [0, 1]: pydicom's output divided by the top of its range (``2**n - 1`` for a VOI
            LUT of ``n`` bits per entry, PS3.3 C.11.2.1.1).
        """
        if self.lut_source is not None:
            bits = int(self.lut_source.VOILUTSequence[0].LUTDescriptor[2])
            if np.array_equal(values, np.round(values)):  # a LUT is indexed by integers
                values = values.astype(np.int64)
            return np.clip(apply_voi_lut(values, self.lut_source) / float(2**bits - 1), 0.0, 1.0)
        window = Dataset()
        window.PhotometricInterpretation, window.BitsStored, window.PixelRepresentation = "MONOCHROME2", 16, 0
        window.WindowCenter, window.WindowWidth, window.VOILUTFunction = self.center, self.width, self.function
        return np.clip(apply_voi_lut(values, window) / _WINDOW_TOP, 0.0, 1.0)


def _first(value: object) -> object:
    return value[0] if isinstance(value, MultiValue) else value


def _image_lut(ds: Dataset) -> GreyWindow | None:
    """The image's first VOI LUT Sequence item when pydicom can apply it (descriptor and data present, 8 or 10 to
    16 bits per entry), else None."""
    items = ds.get("VOILUTSequence")
    if not items or items[0].get("LUTDescriptor") is None or items[0].get("LUTData") is None:
        return None
    if int(items[0].LUTDescriptor[2]) not in (8, *range(10, 17)):
        return None
    return GreyWindow(None, None, "image VOI LUT Sequence", lut_source=ds)


def _image_window(ds: Dataset) -> GreyWindow | None:
    """The image's first Window Center / Width with its VOI LUT Function, when pydicom can apply it, else None."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or str(center) == "" or str(width) == "":
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    center, width = float(_first(center)), float(_first(width))
    usable = width >= 1 if function == "LINEAR" else width > 0  # PS3.3 C.11.2.1.2 and C.11.2.1.3; False for NaN
    if function not in VOI_FUNCTIONS or not usable:
        return None
    return GreyWindow(center, width, "image WindowCenter/WindowWidth", function)


def grey_window(ds: Dataset, configured: tuple[float, float] | None = None) -> GreyWindow:
    """The VOI transform for a greyscale image (fixed per series, never per slice).

    In this order: ``configured`` (a LINEAR window); the image's first VOI LUT Sequence item (pydicom prefers it to
    a window, as viewers do); its first Window Center / Width with its VOI LUT Function (LINEAR, LINEAR_EXACT or
    SIGMOID); else the full range of stored values through the modality LUT, as a LINEAR window.

    Args:
        ds: the (first) image of the series.
        configured: ``(center, width)`` of ``--window``.

    Returns:
        The transform, with its origin.
    """
    if configured is not None:
        return GreyWindow(float(configured[0]), float(configured[1]), "configured")
    image = _image_lut(ds) or _image_window(ds)
    if image is not None:
        return image
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    lo, hi = sorted(float(v) for v in np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))
    return GreyWindow((lo + hi + 1.0) / 2.0, hi - lo + 1.0, f"full {bits}-bit stored range")


def greyscale_to_unit(ds: Dataset, arr: np.ndarray, window: GreyWindow) -> np.ndarray:
    """Greyscale stored values -> [0, 1]: modality LUT (rescale slope / intercept or Modality LUT Sequence), the
    series' VOI transform, MONOCHROME1 inversion.

    Args:
        ds: the image (its Modality LUT module and Photometric Interpretation).
        arr: ``(H, W)`` stored values (``pixel_array``).
        window: the series' VOI transform (:func:`grey_window`).

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    unit = window.apply(np.asarray(apply_modality_lut(arr, ds)))
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        unit = 1.0 - unit
    return unit.astype(np.float32)
