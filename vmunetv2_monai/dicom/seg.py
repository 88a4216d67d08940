"""Binary DICOM Segmentation (and an optional secondary-capture overlay) for one source image, via highdicom.

UIDs are derived deterministically from the source SOPInstanceUID and the algorithm name/version, so a
re-run after a crash produces the same SEG instance (the PACS can be asked whether it already has it, and a
second store of it is not a second object).
"""

from __future__ import annotations

import logging
import uuid

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID
from pydicom.valuerep import DA, TM

from .. import __version__
from .algorithm import MANUFACTURER, AlgorithmInfo
from .reader import UnsupportedDicomError

logger = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
POLYP = hd.sr.CodedConcept("41329004", "SCT", "Polyp")
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
LESION = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
#: segment label (lower case) -> (category, type); anything else is category and type "Tissue".
_PROPERTY_CODES = {
    "polyp": (codes.SCT.MorphologicallyAbnormalStructure, POLYP),
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, LESION),
}


def derived_uid(source_sop_instance_uid: str, algorithm: AlgorithmInfo, kind: str) -> str:
    """Deterministic UID (2.25 form) for an object of ``kind`` derived from a source instance."""
    name = "|".join([str(source_sop_instance_uid), algorithm.name, algorithm.version, kind])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def seg_uid_for(source_sop_instance_uid: str, algorithm: AlgorithmInfo) -> str:
    """SOPInstanceUID of the SEG for this source and algorithm."""
    return derived_uid(source_sop_instance_uid, algorithm, "seg-instance")


#: Patient/study attributes (type 2 in the SEG) that highdicom copies from the source; some sources lack them.
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def _valid_da_tm(value: object, vr: str) -> bool:
    try:
        (DA if vr == "DA" else TM)(value)
    except ValueError:
        return False
    return True


def _prepared_source(source: Dataset) -> Dataset:
    """Shallow copy of ``source`` that highdicom accepts; the source itself is not modified.

    Missing type-2 patient/study attributes become empty, non-conformant dates/times become empty, and a
    ``PixelSpacing`` without ``SliceThickness`` on an image without a Frame of Reference is dropped (highdicom
    0.28.2 cannot build a Pixel Measures Sequence from it; such spacing is nominal anyway).
    """
    copy = Dataset(source)
    copy.file_meta = source.file_meta
    changed = []
    for key in _TYPE2_COPIED:
        if key not in copy:
            setattr(copy, key, None)
            changed.append(key)
    for key, vr in (("StudyDate", "DA"), ("StudyTime", "TM"), ("PatientBirthDate", "DA")):
        value = copy.get(key)
        if value and not _valid_da_tm(value, vr):
            setattr(copy, key, None)
            changed.append(key)
    if "FrameOfReferenceUID" not in copy and "PixelSpacing" in copy and "SliceThickness" not in copy:
        del copy.PixelSpacing
        changed.append("PixelSpacing")
    if changed:
        logger.debug("source %s: %s left empty/omitted in the SEG", source.get("SOPInstanceUID"), changed)
    return copy


def build_segmentation(source: Dataset, mask: np.ndarray, algorithm: AlgorithmInfo) -> hd.seg.Segmentation:
    """BINARY SEG of an ``(H, W)`` mask (Rows, Columns order, no transposition) referencing ``source``."""
    mask = np.asarray(mask)
    shape = (int(source.Rows), int(source.Columns))
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the source (Rows, Columns) {shape}")
    label = algorithm.segment_label
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=_PROPERTY_CODES.get(label.lower(), (TISSUE, TISSUE))[0],
        segmented_property_type=_PROPERTY_CODES.get(label.lower(), (TISSUE, TISSUE))[1],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=codes.DCM.ArtificialIntelligence, version=algorithm.version
        ),
    )
    uid = str(source.SOPInstanceUID)
    try:
        return _segmentation(source, mask, algorithm, description, uid)
    except KeyError as exc:  # highdicom looks the source's IOD up by SOP class
        if exc.args and str(exc.args[0]) == str(source.SOPClassUID):
            raise UnsupportedDicomError(
                f"SOP class {source.SOPClassUID} ({UID(str(source.SOPClassUID)).name}) is unknown to highdicom "
                "(retired or private); no SEG can reference it", sop_instance_uid=uid
            ) from exc
        raise


def _segmentation(
    source: Dataset, mask: np.ndarray, algorithm: AlgorithmInfo, description: hd.seg.SegmentDescription, uid: str
) -> hd.seg.Segmentation:
    label = algorithm.segment_label
    return hd.seg.Segmentation(
        source_images=[_prepared_source(source)],
        pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=derived_uid(uid, algorithm, "seg-series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=seg_uid_for(uid, algorithm),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=f"{algorithm.name} {algorithm.version}; vmunetv2_monai {__version__}",
        device_serial_number="0",
        series_description=f"{algorithm.name} {label} SEG",
        omit_empty_frames=False,
    )


def build_overlay(source: Dataset, rgb: np.ndarray, mask: np.ndarray, algorithm: AlgorithmInfo) -> hd.sc.SCImage:
    """Secondary-capture RGB overlay (mask blended in red) for viewers without SEG support."""
    out = rgb.astype(np.float32).copy()
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * red
    uid = str(source.SOPInstanceUID)
    return hd.sc.SCImage(
        pixel_array=np.round(out).astype(np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=derived_uid(uid, algorithm, "overlay-series"),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=derived_uid(uid, algorithm, "overlay-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex") or None,
        accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"),
        study_date=source.get("StudyDate") or None,
        study_time=source.get("StudyTime") or None,
        referring_physician_name=source.get("ReferringPhysicianName"),
        series_description=f"{algorithm.name} {algorithm.segment_label} overlay",
    )


def read_back(ds: Dataset) -> hd.seg.Segmentation:
    """Parse a SEG with highdicom (raises if highdicom cannot)."""
    return hd.seg.Segmentation.from_dataset(ds, copy=True)


def seg_mask_for_source(seg: hd.seg.Segmentation, source_sop_instance_uid: str) -> np.ndarray:
    """The ``(H, W)`` bool mask of segment 1 for one source instance."""
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_sop_instance_uid], segment_numbers=[1], combine_segments=False
    )
    return np.asarray(pixels[0, :, :, 0]).astype(bool)
