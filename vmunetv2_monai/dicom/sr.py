"""DICOM SR measurement report (TID 1500, Comprehensive 3D SR, via highdicom) beside each SEG.

Per segment, one measurement group references the SEG's segment and the source images it was made from:

- one image (one SEG frame): a Planar ROI group (TID 1410) with the segment's **area** in mm² when the source's
  Pixel Spacing is known, its **pixel count**, and its **bounding box** (first/last row and column, 1-based, as
  DICOM numbers rows and columns);
- several slices of a series (multi-frame SEG): a Volumetric ROI group (TID 1411) with the **volume** in mm³
  (voxel count x row spacing x column spacing x slice spacing) when the spacings are known, the **voxel count**,
  and the bounding box with the first/last SEG frame as well.

Rule for an unknown spacing: a source without a usable Pixel Spacing (two positive numbers; e.g. an endoscopy still
or a computed radiograph with ``0\\0``), or a series whose slice spacing cannot be derived, gets no area / volume
item, only the pixel count and bounding box; this is logged at INFO. The pixel count, the bounding box and their
units are not in DICOM's code tables, so they carry codes of this package's private coding scheme
:data:`CODING_SCHEME` (declared in the SR's Coding Scheme Identification Sequence).

UIDs are derived from the sources like the SEG's, so a rerun makes the same SR instance and a PACS keeps one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .. import __version__
from .algorithm import MANUFACTURER, AlgorithmInfo
from .seg import POLYP, _sources_key, derived_uid, known_pixel_spacing

__all__ = [
    "CODING_SCHEME", "SR_SERIES_NUMBER", "SR_SOP_CLASS_UID", "build_report", "read_report_back", "seg_frame_order",
    "segment_measurements", "slice_spacing", "sr_uid_for",
]

logger = logging.getLogger(__name__)

SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
SR_SERIES_NUMBER = 9903
#: Private coding scheme of the measurements DICOM has no code for (designators starting with 99 are private).
CODING_SCHEME = "99VMUNETV2"
PIXEL_COUNT = hd.sr.CodedConcept("PIXELCOUNT", CODING_SCHEME, "Segmented pixel count")
VOXEL_COUNT = hd.sr.CodedConcept("VOXELCOUNT", CODING_SCHEME, "Segmented voxel count")
FIRST_ROW = hd.sr.CodedConcept("BBOXROW1", CODING_SCHEME, "Bounding box first row")
LAST_ROW = hd.sr.CodedConcept("BBOXROWN", CODING_SCHEME, "Bounding box last row")
FIRST_COLUMN = hd.sr.CodedConcept("BBOXCOL1", CODING_SCHEME, "Bounding box first column")
LAST_COLUMN = hd.sr.CodedConcept("BBOXCOLN", CODING_SCHEME, "Bounding box last column")
FIRST_FRAME = hd.sr.CodedConcept("BBOXFRAME1", CODING_SCHEME, "Bounding box first frame")
LAST_FRAME = hd.sr.CodedConcept("BBOXFRAMEN", CODING_SCHEME, "Bounding box last frame")
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
VOXELS = hd.sr.CodedConcept("{voxels}", "UCUM", "voxels")
INDEX = hd.sr.CodedConcept("1", "UCUM", "no units")
ENDOSCOPIC_PROCEDURE = hd.sr.CodedConcept("423827005", "SCT", "Endoscopy")
#: modality -> the Procedure Reported of the report (anything else: "Imaging procedure")
_PROCEDURES = {"ES": ENDOSCOPIC_PROCEDURE, "CT": codes.SCT.ImagingProcedure, "MR": codes.SCT.ImagingProcedure}


def sr_uid_for(source_sop_instance_uids: str | Sequence[str], algorithm: AlgorithmInfo) -> str:
    """SOPInstanceUID of the SR of these source instances (the same sources as the SEG's) and algorithm.

    Args:
        source_sop_instance_uids: one SOPInstanceUID, or those of every slice (order does not matter).
        algorithm: the algorithm identity.
    """
    return derived_uid(_sources_key(source_sop_instance_uids), algorithm, "sr-instance")


def slice_spacing(sources: Sequence[Dataset]) -> float | None:
    """Mean distance in mm between consecutive slices along the slice normal, from Image Position / Orientation
    (Patient); None for one slice or when it cannot be derived (no geometry, or two slices at one position).

    Args:
        sources: the slices of one series, in any order.
    """
    if len(sources) < 2:
        return None
    try:
        iop = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.array([np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)) for ds in sources])
    except (AttributeError, TypeError, ValueError):
        return None
    steps = np.diff(np.sort(positions))
    return float(steps.mean()) if steps.size and float(steps.min()) > 0 else None


def _bounding_box(masks: np.ndarray, volumetric: bool) -> list[tuple[hd.sr.CodedConcept, int]]:
    """``(N, H, W)`` masks -> [(name, 1-based index)] of the first/last row and column (and SEG frame when
    ``volumetric``) holding foreground; empty for an empty mask."""
    if not masks.any():
        return []
    frames, rows, columns = (np.flatnonzero(masks.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    box = [(FIRST_ROW, rows[0] + 1), (LAST_ROW, rows[-1] + 1), (FIRST_COLUMN, columns[0] + 1),
           (LAST_COLUMN, columns[-1] + 1)]
    if volumetric:
        box += [(FIRST_FRAME, frames[0] + 1), (LAST_FRAME, frames[-1] + 1)]
    return [(name, int(value)) for name, value in box]


def seg_frame_order(seg: Dataset, sources: Sequence[Dataset]) -> list[int]:
    """Index in ``sources`` of the source of each SEG frame (highdicom orders a series' frames by position, not
    as given); raises ValueError unless every frame names one of the sources.

    Args:
        seg: the SEG dataset.
        sources: the source datasets it was made from.

    Returns:
        For each SEG frame in order, the index of its source in ``sources``.

    Raises:
        ValueError: when a frame does not reference exactly one of ``sources``.
    """
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(sources)}
    order = []
    for number, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        refs = [str(src.ReferencedSOPInstanceUID) for item in group.get("DerivationImageSequence", [])
                for src in item.get("SourceImageSequence", [])]
        if len(refs) != 1 or refs[0] not in index:
            raise ValueError(f"SEG {seg.SOPInstanceUID} frame {number}: source {refs} is not one of the sources")
        order.append(index[refs[0]])
    return order


def segment_measurements(masks: np.ndarray, sources: Sequence[Dataset]) -> dict[str, float | int | None]:
    """What the report says about one segment's ``(N, H, W)`` bool masks over ``sources`` (N slices in the SEG's
    frame order, so that the bounding box's frames are SEG frame numbers): ``count`` (pixels / voxels), ``area_mm2``
    (one slice) or ``volume_mm3`` (several), None when a spacing is unknown, and the 1-based bounding box keys
    ``row_first`` ... (absent for an empty mask).

    Args:
        masks: ``(N, H, W)`` masks of one segment, nonzero is foreground.
        sources: the N source datasets, in the same order as ``masks``.
    """
    masks = np.asarray(masks, dtype=bool)
    spacing = known_pixel_spacing(sources[0])
    out: dict[str, float | int | None] = {"count": int(masks.sum())}
    if len(sources) == 1:
        out["area_mm2"] = None if spacing is None else out["count"] * spacing[0] * spacing[1]
    else:
        step = slice_spacing(sources)
        out["volume_mm3"] = (None if spacing is None or step is None
                             else out["count"] * spacing[0] * spacing[1] * step)
    keys = ("row_first", "row_last", "column_first", "column_last", "frame_first", "frame_last")
    out.update({key: value for key, (_, value) in zip(keys, _bounding_box(masks, len(sources) > 1), strict=False)})
    return out


def build_report(
    seg: Dataset,
    sources: Sequence[Dataset],
    masks: np.ndarray,
    algorithm: AlgorithmInfo,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 measurement report of a SEG built by :func:`~.seg.build_segmentation` from ``sources`` (one image,
    or the slices of one series, in any order) and their ``(N, H, W)`` (or ``(H, W)``) masks of segment
    1. Patient and study attributes are the SEG's (the same minimal set); the report references the SEG's segment
    and every source image, and lists both as evidence.

    Args:
        seg: the SEG dataset made from ``sources``.
        sources: one source image, or the slices of one series.
        masks: ``(N, H, W)`` or ``(H, W)`` masks in the order of ``sources``, nonzero is foreground.
        algorithm: the algorithm identity (as for the SEG).

    Returns:
        The highdicom Comprehensive 3D SR.

    Raises:
        ValueError: when the number of masks differs from the number of sources, or the SEG's frames are not one
            per source.
    """
    sources = list(sources)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] != len(sources):
        raise ValueError(f"{masks.shape[0]} masks for {len(sources)} sources")
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    first = sources[0]
    order = seg_frame_order(seg, sources)
    if sorted(order) != list(range(len(sources))):
        raise ValueError(f"SEG {seg.SOPInstanceUID}: frames {order} are not one per source")
    masks = masks[order]  # SEG frame order: the bounding box gives SEG frame numbers
    sources = [sources[i] for i in order]
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    tracking = hd.sr.TrackingIdentifier(uid=derived_uid(_sources_key(uids), algorithm, "sr-segment-1"),
                                        identifier=f"{algorithm.segment_label} segment 1")
    values = segment_measurements(masks, sources)
    volumetric = len(sources) > 1
    count = int(values["count"])
    items = [hd.sr.Measurement(name=VOXEL_COUNT if volumetric else PIXEL_COUNT, value=count,
                               unit=VOXELS if volumetric else PIXELS, algorithm_id=algorithm_id)]
    size_key = "volume_mm3" if volumetric else "area_mm2"
    if values[size_key] is None:
        logger.info("SR of %s: %s unknown (no usable %s); the report gives the %s count only", uids[0],
                    "volume" if volumetric else "area", "pixel or slice spacing" if volumetric else "Pixel Spacing",
                    "voxel" if volumetric else "pixel")
    elif volumetric:
        items.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(values[size_key]),
                                       unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm_id,
                                       method=codes.DCM.SumOfSegmentedVoxelMethodForVolume))
    else:
        items.append(hd.sr.Measurement(name=codes.SCT.Area, value=float(values[size_key]),
                                       unit=codes.UCUM.SquareMillimeter, algorithm_id=algorithm_id))
    items += [hd.sr.Measurement(name=name, value=value, unit=INDEX) for name, value in
              _bounding_box(masks, volumetric)]
    seg_uid, seg_class = str(seg.SOPInstanceUID), str(seg.SOPClassUID)
    finding = POLYP if algorithm.segment_label.lower() == "polyp" else codes.SCT.MorphologicallyAbnormalStructure
    source_refs = [hd.sr.SourceImageForSegmentation(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sources]
    if volumetric:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm_id, measurements=items,
            referenced_segment=hd.sr.ReferencedSegment(seg_class, seg_uid, segment_number=1,
                                                       source_images=source_refs),
        )
    else:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=finding, algorithm_id=algorithm_id, measurements=items,
            referenced_segment=hd.sr.ReferencedSegmentationFrame(seg_class, seg_uid, frame_number=1,
                                                                 segment_number=1, source_image=source_refs[0]),
        )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(algorithm.name, algorithm, "device"), name=algorithm.name,
            manufacturer_name=MANUFACTURER, model_name=algorithm.name),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_PROCEDURES.get(str(first.get("Modality", "")), codes.SCT.ImagingProcedure),
        imaging_measurements=[group],
    )
    number = first.get("SeriesNumber")
    of = f" of series {number}" if number not in (None, "") else ""
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources],  # the SEG first: the SR copies its patient and study attributes
        content=report,
        series_instance_uid=derived_uid(str(first.SeriesInstanceUID), algorithm, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_uid_for(uids, algorithm),
        instance_number=int(first.get("InstanceNumber") or 1) if len(sources) == 1 else 1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        manufacturer_model_name=algorithm.name,
        software_versions=f"{algorithm.name} {algorithm.version}; vmunetv2_monai {__version__}",
        device_serial_number="0",
        series_description=f"{algorithm.name} {algorithm.segment_label} measurements{of}"[:64],
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=CODING_SCHEME, name="vmunetv2-monai segmentation measurements",
            responsible_organization=MANUFACTURER)],
    )
    _drop_segment_number_beside_frame(sr)
    return sr


def _drop_segment_number_beside_frame(item: Dataset) -> None:
    """Remove Referenced Segment Number from every SOP reference that has a Referenced Frame Number (highdicom's
    Referenced Segmentation Frame item writes both; PS3.3 Table 10-3 allows the segment number only when no frame
    number is given, and dciodvfy reports it as an error): the SEG frame identifies its segment."""
    for ref in item.get("ReferencedSOPSequence", []):
        if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
            del ref.ReferencedSegmentNumber
    for child in item.get("ContentSequence", []):
        _drop_segment_number_beside_frame(child)


def read_report_back(ds: Dataset) -> hd.sr.Comprehensive3DSR:
    """Parse an SR with highdicom and find its measurement groups (raises if highdicom cannot).

    Args:
        ds: the SR dataset (copied, not modified).

    Returns:
        The parsed highdicom Comprehensive 3D SR.

    Raises:
        ValueError: when the report has no planar or volumetric measurement group.
    """
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=True)
    report = sr.content
    if not report.get_planar_roi_measurement_groups() and not report.get_volumetric_roi_measurement_groups():
        raise ValueError(f"SR {ds.SOPInstanceUID}: no measurement group")
    return sr
