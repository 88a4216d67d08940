"""Which source images make one SEG, and making it: every slice of a volumetric series (CT, MR: one frame of
reference and geometry) gives one multi-frame SEG; independent images (endoscopy stills, photographs,
ultrasound, secondary captures) give one SEG each."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..bundle.predictor import Predictor
from .algorithm import MANUFACTURER, AlgorithmInfo
from .reader import NON_IMAGE_SOP_CLASSES, UnsupportedDicomError, is_greyscale, load_image
from .seg import build_overlay, build_segmentation, read_back, seg_uid_for, source_problem
from .sr import build_report, read_report_back
from .voi import GreyWindow, grey_window

__all__ = [
    "VOLUME_ATTRIBUTES", "Segmenter", "UnitResult", "duplicate_positions", "duplicate_uids", "group_units",
    "is_series_unit", "is_volumetric", "skip_reason",
]

logger = logging.getLogger(__name__)

#: What makes an image a slice of a volume: it sits in a patient coordinate system with a known geometry.
VOLUME_ATTRIBUTES = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def is_volumetric(ds: Dataset) -> bool:
    """Whether ``ds`` is a slice of a volume (all of :data:`VOLUME_ATTRIBUTES` present with values).

    Args:
        ds: a source dataset (headers suffice).
    """
    return all(ds.get(key) not in (None, "") for key in VOLUME_ATTRIBUTES)


def is_series_unit(unit: Sequence[Dataset]) -> bool:
    """Whether a unit is (part of) a volumetric series, which waits for its series to settle and gets one SEG of
    all its slices, rather than an independent image.

    Args:
        unit: the datasets of one unit (from :func:`group_units`).
    """
    return len(unit) > 1 or is_volumetric(unit[0])


def skip_reason(sop_class_uid: str, manufacturer: str) -> str | None:
    """Why an instance is deliberately not segmented (recorded as skipped, not failed), or None: a non-image
    (SEG, SR, presentation state, PDF) or an object this pipeline created. One rule for every mode.

    Args:
        sop_class_uid: the instance's SOP Class UID.
        manufacturer: the instance's Manufacturer.
    """
    if sop_class_uid in NON_IMAGE_SOP_CLASSES:
        return f"not an image (SOP class {sop_class_uid})"
    if manufacturer == MANUFACTURER:
        return "created by this pipeline"
    return None


def _rounded(values: Iterable[object]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _geometry(ds: Dataset) -> tuple:
    return (str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID), _rounded(ds.ImageOrientationPatient),
            int(ds.Rows), int(ds.Columns), _rounded(ds.PixelSpacing))


def _position_along_normal(ds: Dataset) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, dtype=float)))


def group_units(datasets: Iterable[Dataset]) -> list[list[Dataset]]:
    """Split headers into SEG units: volumetric slices grouped by series and geometry (sorted along the slice
    normal), every other image alone. Units are returned in order of first appearance.

    Args:
        datasets: source headers.

    Returns:
        The units, each a list of datasets.
    """
    units: dict[object, list[Dataset]] = {}
    for ds in datasets:
        key = _geometry(ds) if is_volumetric(ds) else ("image", str(ds.SOPInstanceUID))
        units.setdefault(key, []).append(ds)
    for key, unit in units.items():
        if key[0] != "image":
            unit.sort(key=_position_along_normal)
    return list(units.values())


def _named(ds: Dataset) -> str:
    """A source as a refusal names it: its file name when it was read from a file, and its SOPInstanceUID."""
    filename = getattr(ds, "filename", None)
    uid = f"SOPInstanceUID {ds.get('SOPInstanceUID', '?')}"
    return f"{Path(filename).name} ({uid})" if isinstance(filename, (str, os.PathLike)) else uid


def duplicate_positions(unit: Sequence[Dataset]) -> str | None:
    """Why the slices of a volumetric unit are not one volume, or None: two or more of them at the same Image
    Position (Patient) (copies with new UIDs, e.g. pydicom's ``MR2_UNCR.dcm`` / ``MR2_J2KR.dcm`` / ``MR2_J2KI.dcm``,
    or repeated acquisitions / echoes in one series). highdicom refuses such a SEG; the reason names the slices.

    Args:
        unit: the datasets of one unit (from :func:`group_units`).
    """
    if len(unit) < 2 or not is_volumetric(unit[0]):
        return None
    at: dict[tuple[float, ...], list[Dataset]] = {}
    for ds in unit:
        at.setdefault(tuple(float(v) for v in ds.ImagePositionPatient), []).append(ds)
    shared = {pos: slices for pos, slices in at.items() if len(slices) > 1}
    if not shared:
        return None
    listed = "; ".join(", ".join(_named(ds) for ds in slices) + " at " + "\\".join(f"{v:g}" for v in pos)
                       for pos, slices in shared.items())
    return (f"{sum(len(s) for s in shared.values())} slices of series {unit[0].SeriesInstanceUID} share an Image "
            f"Position (Patient): {listed}; a SEG of a series has one frame per position (copies with new UIDs, "
            "repeated acquisitions or echoes in one series are not one volume)")


def duplicate_uids(datasets: Iterable[tuple[str, Dataset]]) -> dict[str, str]:
    """``source -> reason`` for every input whose SOPInstanceUID an earlier input already has.

    Args:
        datasets: ``(source name, dataset)`` pairs, in input order.
    """
    first: dict[str, str] = {}
    out = {}
    for source, ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in first:
            out[source] = f"duplicate SOPInstanceUID {uid} (also in {first[uid]})"
        else:
            first[uid] = source
    return out


@dataclass
class UnitResult:
    """The SEG of one unit, its overlays (if asked for), the source instances it covers and its SR measurement
    report (``reports``: one, or none with ``report=False``). Stored in that order: overlays and reports before
    the SEG, so that "SEG present" implies everything is.

    Attributes:
        seg: the SEG dataset.
        overlays: the secondary-capture overlays, one per source image (empty unless asked for).
        source_uids: SOPInstanceUIDs of the source instances the SEG covers.
        seconds: wall time spent on the unit.
        reports: the SR measurement report (one, or none).
    """

    seg: Dataset
    overlays: list[Dataset]
    source_uids: list[str]
    seconds: float
    reports: list[Dataset] = field(default_factory=list)

    def extras(self) -> list[Dataset]:
        """What is stored before the SEG: overlays, then the SR."""
        return self.overlays + self.reports


class Segmenter:
    """Model + algorithm identity + intensity rule: a unit of source datasets -> a checked SEG.

    Args:
        predictor: the bundle predictor that maps one image to a mask.
        algorithm: the algorithm identity written into the SEG; ``AlgorithmInfo()`` when None.
        window: greyscale window ``(center, width)`` for greyscale sources; None: the image's own, else full range.
        overlay: also make a secondary-capture overlay per source image.
        copy_attributes: source attributes copied into the SEG and overlays beyond the required ones.
        report: also make a TID 1500 SR measurement report per SEG.
    """

    def __init__(
        self,
        predictor: Predictor,
        algorithm: AlgorithmInfo | None = None,
        window: tuple[float, float] | None = None,
        overlay: bool = False,
        copy_attributes: Sequence[str] = (),
        report: bool = True,
    ) -> None:
        self.predictor = predictor
        self.algorithm = algorithm or AlgorithmInfo()
        self.window = window
        self.overlay = overlay
        #: source attributes copied into the SEG and overlays beyond the required ones (``--copy-attribute``)
        self.copy_attributes = tuple(copy_attributes)
        #: also make a TID 1500 SR measurement report per SEG (``--no-sr`` turns it off)
        self.report = report

    def seg_uid(self, source_uids: Sequence[str]) -> str:
        """SOPInstanceUID of the SEG of these sources.

        Args:
            source_uids: the SOPInstanceUIDs of the unit's sources.
        """
        return seg_uid_for(list(source_uids), self.algorithm)

    def _window(self, first: Dataset) -> GreyWindow | None:
        if not is_greyscale(first):
            return None
        window = grey_window(first, self.window)
        if window.origin.startswith("full"):
            logger.warning("%s: no window configured and none in the image; using the %s (set --window C W)",
                           first.get("SOPInstanceUID"), window.origin)
        return window

    def segment(self, unit: Sequence[Dataset], source: str, instance_number: int | None = None) -> UnitResult:
        """Predict every image of ``unit`` (one greyscale window for all its slices), build and check the SEG
        (``instance_number``: see :func:`~.seg.build_segmentation`). Slices sharing a position
        (:func:`duplicate_positions`) and sources highdicom cannot reference (:func:`~.seg.source_problem`) are
        refused first, before any prediction.

        Args:
            unit: the datasets of one unit (from :func:`group_units`).
            source: the unit's name in messages (file or PACS location).
            instance_number: the SEG's Instance Number, or None for the default.

        Returns:
            The SEG, overlays, reports and source UIDs of the unit.

        Raises:
            UnsupportedDicomError: a unit highdicom cannot make a SEG of (naming ``source``).
        """
        problem = duplicate_positions(unit) or source_problem(unit[0])  # before any prediction
        if problem is not None:
            raise UnsupportedDicomError(problem, source, str(unit[0].get("SOPInstanceUID", "")) or None)
        start = time.perf_counter()
        window = self._window(unit[0])
        images = [load_image(ds, source=f"{source} instance {ds.get('SOPInstanceUID', '?')}", window=window)
                  for ds in unit]
        masks = np.stack([self.predictor.predict(image.image) for image in images])
        source_rule = ({"greyscale_window": window.describe()} if window is not None
                       else {"colour": "stored / (2**BitsStored - 1) * 255"})
        parameters = {**source_rule, "bundle_intensity": self.predictor.intensity_rule}
        try:
            seg = build_segmentation(list(unit), masks, self.algorithm, parameters, self.copy_attributes,
                                     instance_number)
        except UnsupportedDicomError as exc:
            if exc.source:
                raise
            raise UnsupportedDicomError(exc.reason, source, exc.sop_instance_uid) from exc  # name the file / unit
        read_back(seg)
        reports = [build_report(seg, list(unit), masks, self.algorithm)] if self.report else []
        for report in reports:
            read_report_back(report)
        overlays = ([build_overlay(image.dataset, image.display_rgb(), mask, self.algorithm, self.copy_attributes)
                     for image, mask in zip(images, masks, strict=True)] if self.overlay else [])
        seconds = time.perf_counter() - start
        logger.info("%s: SEG of %d image(s) %dx%d, %d foreground pixels, %.2f s (%.2f s per image)", source,
                    len(unit), masks.shape[1], masks.shape[2], int(masks.sum()), seconds, seconds / len(unit))
        return UnitResult(seg, overlays, [str(ds.SOPInstanceUID) for ds in unit], seconds, reports)
