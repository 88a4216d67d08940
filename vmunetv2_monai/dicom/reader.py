"""DICOM image -> model input: single-frame RGB / YBR / palette colour and greyscale images, checked first.

The model input is what the bundle's ``read_transforms`` give for an image file: three channels of float values on
the 8-bit scale [0, 255] (:data:`LOADED_MAX`); the bundle's ``intensity_transforms`` (``intensity``,
``intensity_range``, ``normalization``) are applied to it by :class:`~vmunetv2_monai.bundle.predictor.Predictor`,
as to a PNG. Greyscale images are first put through the series' fixed VOI transform (:mod:`~.voi`: a window or VOI
LUT, applied by pydicom's ``apply_voi_lut``) to [0, 1], which then spans that 8-bit scale.

Orientation rule: everything stays in pydicom's ``pixel_array`` order, rows first: ``(H, W)`` = (Rows,
Columns). The model input is ``(3, H, W)``; the mask is ``(H, W)`` and goes into the SEG as is. No axis is
swapped anywhere (MONAI's image readers would swap to ``(W, H)``; we never use them for DICOM).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import UID

from .voi import GreyWindow, grey_window, greyscale_to_unit

__all__ = [
    "COLOUR_PHOTOMETRIC", "GEOMETRY_ATTRIBUTES", "LOADED_MAX", "NON_IMAGE_SOP_CLASSES", "SOURCE_UID_ATTRIBUTES",
    "DicomImage", "UnsupportedDicomError", "check_metadata", "check_supported", "decode_problem", "failure_reason",
    "is_greyscale", "load_image", "read_dataset", "to_model_input", "uid_problem",
]

logger = logging.getLogger(__name__)

#: Top of the value scale of the bundle's loaded images (8-bit; its LoadImaged scales 16-bit files to it too).
LOADED_MAX = 255.0

#: Non-image objects the pipeline never segments (skipped, not refused).
NON_IMAGE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR (the measurement reports this pipeline writes)
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    }
)


class UnsupportedDicomError(ValueError):
    """A DICOM input the pipeline refuses, with the reason and the file / SOP instance it concerns.

    The message is ``"<source> (SOPInstanceUID <uid>): <reason>"`` (``<dataset>`` when no source is given).

    Args:
        reason: why it is refused (recorded as is in the state file, see :func:`failure_reason`).
        source: the file, URL or other name of where it came from ("": unnamed).
        sop_instance_uid: its SOPInstanceUID, None when unknown.
    """

    def __init__(self, reason: str, source: str = "", sop_instance_uid: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.sop_instance_uid = sop_instance_uid
        where = source or "<dataset>"
        if sop_instance_uid:
            where += f" (SOPInstanceUID {sop_instance_uid})"
        super().__init__(f"{where}: {reason}")


def failure_reason(exc: BaseException) -> str:
    """What the state file records for an object that could not be processed: a refusal's reason, else the
    exception's type and message.

    Args:
        exc: the exception raised while processing it.

    Returns:
        :attr:`UnsupportedDicomError.reason` for a refusal, else ``"<type>: <message>"``.
    """
    return exc.reason if isinstance(exc, UnsupportedDicomError) else f"{type(exc).__name__}: {exc}"


#: Photometric interpretations of three samples per pixel that pydicom decodes to RGB (PS3.3 C.7.6.3.1.2).
COLOUR_PHOTOMETRIC = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})

#: Geometry attributes and their number of values: present but not that many finite numbers is a refusal (slices
#: are grouped and sorted by them before anything else is done).
GEOMETRY_ATTRIBUTES = (("PixelSpacing", 2), ("ImageOrientationPatient", 6), ("ImagePositionPatient", 3))

#: UIDs of a source that end up in its SEG (referenced or copied): each must be a DICOM UID (PS3.5 9.1).
SOURCE_UID_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                         "FrameOfReferenceUID")
_UID_GRAMMAR = re.compile(r"[0-9]+(\.[0-9]+)*")


def uid_problem(key: str, value: object) -> str | None:
    """Why ``value`` of the attribute ``key`` is not a DICOM UID (digits and dots, at most 64 characters), or None.

    Args:
        key: the attribute's keyword, named in the reason.
        value: its value (compared as ``str(value)``).

    Returns:
        The reason, or None when ``value`` is a valid UID.
    """
    text = str(value)
    if len(text) <= 64 and _UID_GRAMMAR.fullmatch(text) is not None:
        return None
    return f"invalid {key} {text[:80]!r} (a UID is digits separated by dots, at most 64 characters)"


def _geometry_problem(ds: Dataset, key: str, n_values: int) -> str | None:
    """Why the attribute ``key`` of ``ds`` is not ``n_values`` finite numbers, or None if it is (or is absent)."""
    try:
        value = ds.get(key)
    except ValueError as exc:  # an invalid value under a strict pydicom validation mode
        return f"{key} cannot be read ({exc})"
    if value in (None, ""):
        return None
    values = list(value) if isinstance(value, MultiValue) else [value]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):  # kept as text by pydicom when it is not a number, e.g. "abc"
        numbers = []
    if len(numbers) == n_values and all(math.isfinite(x) for x in numbers):
        return None
    shown = "\\".join(str(v) for v in values)[:80]
    return f"{key} '{shown}' is not {n_values} numbers"


@dataclass
class DicomImage:
    """A checked source image and its model input (``(3, H, W)`` float32 in [0, :data:`LOADED_MAX`]).

    Attributes:
        dataset: the source dataset.
        image: the model input, ``(3, H, W)`` float32 in [0, :data:`LOADED_MAX`], H = Rows and W = Columns.
        source: how messages name the source (file path, URL or ``SOPInstanceUID <uid>``).
    """

    dataset: Dataset
    image: np.ndarray
    source: str

    @property
    def sop_instance_uid(self) -> str:
        """The source's SOPInstanceUID."""
        return str(self.dataset.SOPInstanceUID)

    def display_rgb(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 rendering of the model input (for overlays)."""
        return np.round(np.moveaxis(self.image, 0, -1)).astype(np.uint8)


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a DICOM file; unreadable or truncated headers raise :class:`UnsupportedDicomError`.

    Args:
        path: the file.

    Returns:
        The whole dataset, pixel data included.

    Raises:
        UnsupportedDicomError: the file cannot be read as DICOM (naming the file and pydicom's error).
    """
    path = Path(path)
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise UnsupportedDicomError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", str(path)) from exc


def _expected_native_bytes(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    n = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(getattr(ds, "NumberOfFrames", 1) or 1)
    return (n * bits + 7) // 8


def check_metadata(ds: Dataset, source: str = "", pixel_data_in_header: bool = True) -> None:
    """Refuse from the header alone (no pixel data needed): non-images, multi-frame, unsupported pixel layouts,
    missing study / series UIDs, UIDs that are not DICOM UIDs (:data:`SOURCE_UID_ATTRIBUTES`), a geometry
    (:data:`GEOMETRY_ATTRIBUTES`) that is not numbers.

    Used on WADO-RS metadata before any pixel data is downloaded, and on every local file. With
    ``pixel_data_in_header=False`` (WADO-RS metadata) a header without a pixel data element is not refused for it:
    Orthanc's metadata leaves out encapsulated (compressed) pixel data, so only the retrieved instance can tell, and
    :func:`check_supported` refuses it there if it really has none.

    Args:
        ds: the header (pixel data not needed).
        source: how the refusal names where it came from.
        pixel_data_in_header: whether a missing pixel data element is refused (False for WADO-RS metadata).

    Raises:
        UnsupportedDicomError: the reason for the first problem found.
    """
    uid = str(ds.get("SOPInstanceUID", "")) or None

    def refuse(reason: str) -> UnsupportedDicomError:
        return UnsupportedDicomError(reason, source, uid)

    if uid is None:
        raise refuse("missing SOPInstanceUID")
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(ds.get(key, "")):
            raise refuse(f"missing {key}")
    for key in SOURCE_UID_ATTRIBUTES:
        problem = uid_problem(key, ds.get(key)) if str(ds.get(key, "")) else None
        if problem is not None:
            raise refuse(problem)
    if str(ds.get("SOPClassUID", "")) in NON_IMAGE_SOP_CLASSES:
        raise refuse(f"not an image (SOP class {UID(str(ds.SOPClassUID)).name})")
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if other:
            raise refuse(f"unsupported pixel data element {other[0]}")
        if pixel_data_in_header:
            raise refuse("missing pixel data")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:  # an IS that is not a number, e.g. pydicom's badVR.dcm '1A'
        raw = ds.get_item("NumberOfFrames").value  # as stored (bytes when not yet converted)
        shown = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip()[:40]
        raise refuse(f"NumberOfFrames {shown!r} is not a number") from exc
    if frames != 1:
        raise refuse(f"multi-frame image ({frames} frames); only single-frame images are supported")
    for key in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation"):
        if key not in ds:
            raise refuse(f"missing {key}")
    spp, pi = int(ds.SamplesPerPixel), str(ds.PhotometricInterpretation)
    if spp not in (1, 3):
        raise refuse(f"unsupported SamplesPerPixel {spp}")
    if spp == 1 and pi not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
        raise refuse(f"unsupported photometric interpretation {pi} with one sample per pixel")
    if spp == 3 and pi not in COLOUR_PHOTOMETRIC:
        raise refuse(f"unsupported photometric interpretation {pi} with three samples per pixel")
    for key, n_values in GEOMETRY_ATTRIBUTES:
        problem = _geometry_problem(ds, key, n_values)
        if problem is not None:
            raise refuse(problem)


def check_supported(ds: Dataset, source: str = "") -> None:
    """Raise :class:`UnsupportedDicomError` unless ``ds`` is a single-frame image this pipeline can decode.

    The header checks of :func:`check_metadata`, then the transfer syntax and its decoder, and empty or truncated
    (native) pixel data.

    Args:
        ds: the whole dataset, pixel data included.
        source: how the refusal names where it came from.

    Raises:
        UnsupportedDicomError: the reason for the first problem found.
    """
    check_metadata(ds, source)
    uid = str(ds.SOPInstanceUID)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise UnsupportedDicomError("no transfer syntax in the file meta information", source, uid)
    tsyntax = UID(str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedDicomError(f"unsupported transfer syntax {tsyntax} ({tsyntax.name})", source, uid) from exc
    if not decoder.is_available:
        raise UnsupportedDicomError(
            f"transfer syntax {tsyntax.name} needs a missing decoder: {decoder.missing_dependencies}", source, uid)
    if not ds.PixelData:  # pydicom reads a zero-length element as None
        raise UnsupportedDicomError("zero-length pixel data (the PixelData element is empty)", source, uid)
    if not tsyntax.is_compressed:
        have, need = len(ds.PixelData), _expected_native_bytes(ds)
        if have < need:
            raise UnsupportedDicomError(f"truncated pixel data ({have} of {need} bytes)", source, uid)


def decode_problem(ds: Dataset) -> str | None:
    """Why pydicom cannot decode the pixel data of ``ds`` here (no decoder for its transfer syntax, a decoder plugin
    missing, or the decoder failing), or None when it can or when there is nothing to decode. Compressed pixel data
    is decoded once to find out; pydicom keeps the array, so the model input does not decode it again.

    Args:
        ds: the dataset with its pixel data.

    Returns:
        The reason, or None.
    """
    if "PixelData" not in ds or not ds.PixelData:
        return None  # refused by check_supported, with its own reason
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None or not UID(str(tsyntax)).is_compressed:
        return None
    tsyntax = UID(str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return f"unsupported transfer syntax {tsyntax} ({tsyntax.name})"
    if not decoder.is_available:
        return f"transfer syntax {tsyntax.name} needs a missing decoder: {decoder.missing_dependencies}"
    try:
        ds.pixel_array  # noqa: B018 - decoded for the check, kept by pydicom
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason, reported by the caller
        return f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc).strip()[:300]})"
    return None


def to_model_input(ds: Dataset, source: str = "", window: GreyWindow | None = None) -> np.ndarray:
    """Checked, decoded ``(3, H, W)`` float32 in [0, :data:`LOADED_MAX`] (the bundle's loaded-image scale).

    RGB (and YBR, converted to RGB by pydicom) is scaled from [0, ``2**BitsStored - 1``] (unchanged for 8-bit, as
    the bundle loads a PNG); palette colour goes through its LUT; greyscale is rescaled, put through a fixed
    ``window`` to [0, 1] (default :func:`grey_window` of ``ds``; pass one window for every slice of a series),
    inverted if MONOCHROME1, repeated to three channels and scaled to [0, :data:`LOADED_MAX`].

    Args:
        ds: the whole dataset, pixel data included.
        source: how a refusal names where it came from.
        window: the greyscale VOI window (ignored for colour images); None: :func:`grey_window` of ``ds``.

    Returns:
        The model input, ``(3, H, W)`` float32 with H = Rows and W = Columns.

    Raises:
        UnsupportedDicomError: ``ds`` fails :func:`check_supported`, its pixel data cannot be decoded, or the decoded
            shape does not match Rows/Columns.
    """
    check_supported(ds, source)
    try:
        arr = ds.pixel_array  # pydicom 3 converts YBR_* to RGB here
    except Exception as exc:  # any decoder failure is a refusal with its reason
        raise UnsupportedDicomError(
            f"pixel data cannot be decoded ({type(exc).__name__}: {exc})", source, str(ds.SOPInstanceUID)
        ) from exc
    pi = str(ds.PhotometricInterpretation)
    if int(ds.SamplesPerPixel) == 3:
        maxval = float(2 ** int(ds.get("BitsStored", ds.BitsAllocated)) - 1)
        rgb = arr.astype(np.float32) * np.float32(LOADED_MAX / maxval)  # factor 1 for 8-bit: values as stored
    elif pi == "PALETTE COLOR":
        lut = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = lut.astype(np.float32) * np.float32(LOADED_MAX / (2**bits - 1))
    else:
        unit = greyscale_to_unit(ds, arr, window or grey_window(ds))
        rgb = np.repeat(unit[..., None] * np.float32(LOADED_MAX), 3, axis=-1)
    if rgb.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise UnsupportedDicomError(f"decoded shape {rgb.shape} does not match Rows/Columns", source, ds.SOPInstanceUID)
    return np.ascontiguousarray(np.moveaxis(np.clip(rgb, 0.0, LOADED_MAX), -1, 0), dtype=np.float32)


def is_greyscale(ds: Dataset) -> bool:
    """One sample per pixel and not palette colour.

    Args:
        ds: the header (SamplesPerPixel defaults to 1 when absent).

    Returns:
        Whether ``ds`` is a greyscale image.
    """
    return int(ds.get("SamplesPerPixel", 1)) == 1 and str(ds.get("PhotometricInterpretation", "")) != "PALETTE COLOR"


def load_image(
    ds_or_path: Dataset | str | os.PathLike[str], source: str | None = None, window: GreyWindow | None = None
) -> DicomImage:
    """Read (if a path), check and convert one DICOM image (``window``: see :func:`to_model_input`).

    Args:
        ds_or_path: a dataset, or the path of a DICOM file.
        source: how messages name it; None: the path, or ``SOPInstanceUID <uid>`` for a dataset.
        window: the greyscale VOI window; None: the image's own (:func:`grey_window`).

    Returns:
        The dataset with its model input.

    Raises:
        UnsupportedDicomError: the file cannot be read, or the image is refused (see :func:`to_model_input`).
    """
    if isinstance(ds_or_path, Dataset):
        ds = ds_or_path
        src = source or f"SOPInstanceUID {ds.get('SOPInstanceUID', '?')}"
    else:
        src = source or str(ds_or_path)
        ds = read_dataset(ds_or_path)
    return DicomImage(dataset=ds, image=to_model_input(ds, src, window), source=src)
