"""Binary DICOM Segmentation of one image or one series (and optional secondary-capture overlays), via highdicom.

UIDs are derived deterministically from the source SOPInstanceUID(s) and the algorithm name/version, so a
re-run after a crash produces the same SEG instance (the PACS can be asked whether it already has it, and a
second store of it is not a second object).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from copy import copy as shallow_copy
from copy import deepcopy

import highdicom as hd
import numpy as np
from highdicom._standard_utils import (
    ModuleUsageValues,
    get_iod_module_map,
    get_module_attribute_map,
    get_module_usage,
    get_sop_class_iod_map,
    is_multiframe_image,
)
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import UID
from pydicom.valuerep import DA, TM

from .. import __version__
from .algorithm import MANUFACTURER, AlgorithmInfo
from .reader import UnsupportedDicomError

__all__ = [
    "OVERLAY_SERIES_NUMBER", "SEG_SERIES_NUMBER", "SEG_SOP_CLASS_UID", "build_overlay", "build_segmentation",
    "copy_listed_attributes", "derived_uid", "known_pixel_spacing", "output_character_set", "patient_orientation",
    "read_back", "seg_mask_for_source", "seg_uid_for", "source_problem",
]

logger = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SEG_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
POLYP = hd.sr.CodedConcept("41329004", "SCT", "Polyp")
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
LESION = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
SOURCE_FOR_PROCESSING = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
#: segment label (lower case) -> (category, type); anything else is category and type "Tissue".
_PROPERTY_CODES = {
    "polyp": (codes.SCT.MorphologicallyAbnormalStructure, POLYP),
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, LESION),
}


def derived_uid(source_uid: str, algorithm: AlgorithmInfo, kind: str) -> str:
    """Deterministic UID (2.25 form) for an object of ``kind`` derived from a source UID.

    Args:
        source_uid: the UID (or joined UIDs) the object is derived from.
        algorithm: the algorithm identity; its name and version are part of the UID.
        kind: what the object is (``"seg-instance"``, ``"seg-series"``, ``"overlay-instance"``, ...).

    Returns:
        A ``2.25.<integer>`` UID derived from a UUID5 of the inputs.
    """
    name = "|".join([str(source_uid), algorithm.name, algorithm.version, kind])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def _sources_key(source_sop_instance_uids: str | Sequence[str]) -> str:
    if isinstance(source_sop_instance_uids, str):
        return source_sop_instance_uids
    uids = sorted(str(u) for u in source_sop_instance_uids)
    return uids[0] if len(uids) == 1 else "|".join(uids)


def seg_uid_for(source_sop_instance_uids: str | Sequence[str], algorithm: AlgorithmInfo) -> str:
    """SOPInstanceUID of the SEG of these source instances (one image, or every slice of a series) and algorithm.

    Args:
        source_sop_instance_uids: one SOPInstanceUID, or those of every slice (order does not matter).
        algorithm: the algorithm identity.
    """
    return derived_uid(_sources_key(source_sop_instance_uids), algorithm, "seg-instance")


#: Patient/study attributes (type 2 in the SEG) that highdicom copies from the source; some sources lack them.
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def _patient_study_keywords(sop_class_uid: str, usage: str | None = None) -> frozenset[str]:
    """Root attributes of the Patient and Study modules of an IOD (what highdicom copies from a source of that SOP
    class); with ``usage`` "M", only the mandatory modules' type 1, 2, 1C and 2C ones."""
    iod = get_sop_class_iod_map()[sop_class_uid]
    attributes = get_module_attribute_map()
    return frozenset(
        str(item["keyword"]) for module in get_iod_module_map()[iod] if module["ie"] in ("Patient", "Study")
        and (usage is None or module["usage"] == usage) for item in attributes[module["key"]]
        if not item["path"] and (usage is None or item["type"] in ("1", "2", "1C", "2C"))
    )


#: Patient and study attributes a SEG carries: the type 1/2 (and, when the source has them, 1C/2C) attributes of
#: the SEG IOD's mandatory Patient and General Study modules (the SC IOD's are the same). Everything else of
#: those IEs (Patient Study, clinical-trial modules, type-3 attributes such as PatientComments or
#: OtherPatientIDsSequence) is copied only when the user lists it (``--copy-attribute``).
SEG_PATIENT_STUDY_KEPT = _patient_study_keywords(SEG_SOP_CLASS_UID, "M") | {"PatientIdentityRemoved"}


def _drop_unrequested(seg: Dataset, source: Dataset, copy_attributes: Sequence[str]) -> None:
    """Remove from ``seg`` the patient / study attributes highdicom copied from ``source`` beyond
    :data:`SEG_PATIENT_STUDY_KEPT` and ``copy_attributes``."""
    dropped = sorted(k for k in _patient_study_keywords(str(source.SOPClassUID)) - SEG_PATIENT_STUDY_KEPT
                     - set(copy_attributes) if k in seg)
    for keyword in dropped:
        delattr(seg, keyword)
    if dropped:
        logger.debug("source %s: not copied into the SEG: %s", source.get("SOPInstanceUID"), dropped)


def copy_listed_attributes(target: Dataset, source: Dataset, copy_attributes: Sequence[str]) -> None:
    """Copy the attributes the user listed (``--copy-attribute``) that ``source`` has into ``target``.

    Args:
        target: the dataset written to (SEG, overlay or SR); modified in place.
        source: the source dataset.
        copy_attributes: keywords to copy (deep copies); those ``source`` lacks are left out.
    """
    for keyword in copy_attributes:
        if keyword in source:
            target[keyword] = deepcopy(source[keyword])


#: DICOM DA and TM values (PS3.5 6.2): pydicom also parses older forms such as ``1997.04.24``, which dciodvfy refuses.
_DA_TM_FORMAT = {"DA": re.compile(r"[0-9]{8}"), "TM": re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?")}


def _valid_da_tm(value: object, vr: str) -> bool:
    if _DA_TM_FORMAT[vr].fullmatch(str(value).strip()) is None:
        return False
    try:
        (DA if vr == "DA" else TM)(value)
    except ValueError:
        return False
    return True


def _valid_date_time(source: Dataset, keyword: str, vr: str) -> str | None:
    """The source's ``keyword`` value when it is a DICOM ``vr`` (DA / TM) value, else None (written empty)."""
    value = source.get(keyword)
    return str(value) if value and _valid_da_tm(value, vr) else None


#: Specific Character Set terms highdicom accepts (its enum; 'ISO 2022 IR 149', Korean, is missing from it).
_HD_CHARSETS = frozenset(v.value for v in hd.SpecificCharacterSetValues)
UTF8 = "ISO_IR 192"


def output_character_set(source: Dataset) -> str | None:
    """Specific Character Set of a SEG, overlay or SR made from ``source``: the source's own when it is one
    value highdicom accepts, else UTF-8 (``ISO_IR 192``, which encodes any text pydicom decoded), else None
    (default repertoire).

    A multi-valued set (code extensions, e.g. Japanese ``\\ISO 2022 IR 87``) becomes UTF-8 as well: dcmjs, which
    OHIF's SEG loading builds on, refuses to read a file with more than one value ("Using multiple character sets
    is not supported").

    Args:
        source: the source dataset.

    Returns:
        The Specific Character Set term for the derived object, or None for the default repertoire.
    """
    value = source.get("SpecificCharacterSet")
    values = [str(v).strip() for v in (value if isinstance(value, (list, MultiValue)) else [value or ""])]
    if values == [""]:
        return None
    if len(values) == 1 and values[0] in _HD_CHARSETS and not values[0].startswith("ISO 2022"):
        return values[0]
    logger.info("source %s: Specific Character Set %s is not one value highdicom writes and web viewers read; its "
                "SEG, overlay and SR are written in UTF-8 (%s)", source.get("SOPInstanceUID"), "\\".join(values), UTF8)
    return UTF8


def known_pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """The source's Pixel Spacing (row, column in mm) when it is two positive numbers, else None (unknown; e.g. a
    computed radiograph with ``0\\0``).

    Args:
        source: the source dataset.
    """
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    values = (float(spacing[0]), float(spacing[1]))
    return values if min(values) > 0 else None


def _prepared_source(source: Dataset) -> Dataset:
    """Shallow copy of ``source`` that highdicom accepts; the source itself is not modified.

    Missing type-2 patient/study attributes become empty and non-conformant dates/times become empty. A source
    without Modality (type 1, yet some secondary captures lack it) is given :data:`MISSING_MODALITY` here: highdicom
    reads it only for the SEG's Content Label (``OT_SEG``), and the SEG carries no other trace of it. A Pixel
    Spacing that is not :func:`known_pixel_spacing` is left out. A source with Pixel Spacing but no Slice
    Thickness (a 2D image: secondary capture, CR, NM) gets a nominal one, the smaller pixel spacing (cubic
    voxels): highdicom 0.28 writes a Pixel Measures item without it (valid DICOM) but refuses to read one back.
    """
    # Dataset(source) would share the source's element dict: every element is copied (values are not)
    copy = Dataset({elem.tag: shallow_copy(elem) for elem in source})
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
    if changed:
        logger.debug("source %s: %s left empty in the SEG", source.get("SOPInstanceUID"), changed)
    if not str(copy.get("Modality", "") or ""):
        copy.Modality = MISSING_MODALITY
        logger.info("source %s: no Modality (type 1); segmented as %s (Other): the SEG's Content Label is %s_SEG",
                    source.get("SOPInstanceUID"), MISSING_MODALITY, MISSING_MODALITY)
    spacing = known_pixel_spacing(copy)
    if spacing is None and "PixelSpacing" in copy:
        logger.warning("source %s: PixelSpacing %s is not two positive numbers; the SEG has no pixel spacing",
                       source.get("SOPInstanceUID"), copy.PixelSpacing)
        del copy.PixelSpacing
    if spacing is not None and copy.get("SliceThickness") in (None, ""):
        copy.SliceThickness = min(spacing)
        logger.debug("source %s: no SliceThickness; the SEG's Pixel Measures get a nominal %s mm",
                     source.get("SOPInstanceUID"), copy.SliceThickness)
    return copy


#: Modality assumed for a source without one (OT, Other: the Secondary Capture default), see :func:`_prepared_source`.
MISSING_MODALITY = "OT"


def source_problem(source: Dataset) -> str | None:
    """Why highdicom cannot make a SEG of ``source`` although it is a readable image, or None (also for a SOP class
    unknown to highdicom, refused by :func:`build_segmentation` itself):

    - no Frame of Reference UID where the source's IOD makes the Frame of Reference module mandatory (e.g. a CT
      slice without one, pydicom's ``693_UNCR.dcm``): a SEG of it must carry the source's frame of reference;
    - an IOD that allows several frames (RT Dose, XA, NM, US Multi-frame, ...) without a Shared Functional Groups
      Sequence (a classic, not enhanced, multi-frame object, even with one frame, e.g. pydicom's
      ``rtdose_1frame.dcm``): highdicom takes such a source's pixel measures from those functional groups only.

    Args:
        source: the source dataset (headers suffice).

    Returns:
        The reason, or None when highdicom can make a SEG of it.
    """
    sop_class = str(source.get("SOPClassUID", ""))
    if sop_class not in get_sop_class_iod_map():
        return None
    name = UID(sop_class).name
    if (not str(source.get("FrameOfReferenceUID", "") or "")
            and get_module_usage("frame-of-reference", sop_class) == ModuleUsageValues.MANDATORY):
        return (f"missing FrameOfReferenceUID, which the IOD of its SOP class ({name}) requires (type 1 in its "
                "mandatory Frame of Reference module); a SEG of it would need it")
    if is_multiframe_image(source) and "SharedFunctionalGroupsSequence" not in source:
        return (f"SOP class {name} has a multi-frame IOD, and this image has no Shared Functional Groups Sequence "
                "(a classic multi-frame object, here of one frame): highdicom takes the SEG's pixel measures from "
                "those functional groups only")
    return None


def _series_description(source: Dataset, algorithm: AlgorithmInfo, kind: str) -> str:
    """``<name> <label> <kind> of series <n>``, cut to the 64 characters of an LO."""
    number = source.get("SeriesNumber")
    of = f" of series {number}" if number not in (None, "") else ""
    return f"{algorithm.name} {algorithm.segment_label} {kind}{of}"[:64]


def build_segmentation(
    sources: Dataset | Sequence[Dataset],
    masks: np.ndarray,
    algorithm: AlgorithmInfo,
    parameters: Mapping[str, str] | None = None,
    copy_attributes: Sequence[str] = (),
    instance_number: int | None = None,
) -> hd.seg.Segmentation:
    """BINARY SEG referencing ``sources``: one image and an ``(H, W)`` mask, or the slices of one series (same
    frame of reference and geometry) and ``(N, H, W)`` masks in the same order; one frame per source, empty
    frames kept, so every slice is referenced and a reader gets the full volume back.

    Masks are in (Rows, Columns) order, never transposed. ``parameters`` (e.g. the greyscale window) go into
    the segment's Algorithm Parameters. Patient and study attributes: :data:`SEG_PATIENT_STUDY_KEPT`, plus the
    source attributes named in ``copy_attributes``.

    Instance Number: ``instance_number`` when given (the DIMSE listener numbers a whole-series SEG that supersedes
    an earlier one of the same series one higher, so viewers sort them), else the source's for one image and 1
    for a series.

    Args:
        sources: one source image, or the slices of one series.
        masks: ``(H, W)`` (one image) or ``(N, H, W)`` masks, nonzero is foreground; H, W are Rows, Columns.
        algorithm: the algorithm identity (name, version, segment label).
        parameters: Algorithm Parameters of the segment (name -> value), or None.
        copy_attributes: source attribute keywords copied into the SEG beyond the kept ones.
        instance_number: the SEG's Instance Number; None for the default above.

    Returns:
        The highdicom Segmentation.

    Raises:
        ValueError: when the masks' shape is not ``(N, Rows, Columns)`` of the sources.
        UnsupportedDicomError: when :func:`source_problem` names a problem, or highdicom does not know the
            source's SOP class.
    """
    sources = [sources] if isinstance(sources, Dataset) else list(sources)
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if masks.shape != shape:
        raise ValueError(f"mask shape {masks.shape} does not match the sources (N, Rows, Columns) {shape}")
    label = algorithm.segment_label
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=_PROPERTY_CODES.get(label.lower(), (TISSUE, TISSUE))[0],
        segmented_property_type=_PROPERTY_CODES.get(label.lower(), (TISSUE, TISSUE))[1],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name, family=codes.DCM.ArtificialIntelligence, version=algorithm.version,
            parameters=dict(parameters) if parameters else None,
        ),
    )
    first = sources[0]
    uids = [str(s.SOPInstanceUID) for s in sources]
    problem = source_problem(first)
    if problem is not None:
        raise UnsupportedDicomError(problem, sop_instance_uid=uids[0])
    try:
        seg = hd.seg.Segmentation(
            source_images=[_prepared_source(s) for s in sources],
            pixel_array=masks.astype(bool),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=derived_uid(str(first.SeriesInstanceUID), algorithm, "seg-series"),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=seg_uid_for(uids, algorithm),
            instance_number=(instance_number if instance_number is not None
                             else int(first.get("InstanceNumber") or 1) if len(sources) == 1 else 1),
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm.name,
            software_versions=f"{algorithm.name} {algorithm.version}; vmunetv2_monai {__version__}",
            device_serial_number="0",
            series_description=_series_description(first, algorithm, "SEG"),
            omit_empty_frames=False,
            specific_character_set=output_character_set(first),
        )
    except KeyError as exc:  # highdicom looks the source's IOD up by SOP class
        if exc.args and str(exc.args[0]) == str(first.SOPClassUID):
            raise UnsupportedDicomError(
                f"SOP class {first.SOPClassUID} ({UID(str(first.SOPClassUID)).name}) is unknown to highdicom "
                "(retired or private); no SEG can reference it", sop_instance_uid=uids[0]
            ) from exc
        raise
    if "PlaneOrientationSequence" not in seg.SharedFunctionalGroupsSequence[0]:
        # General Image: Patient Orientation is type 2C when there is no patient coordinate system (also when the
        # source has a Frame of Reference UID but no Image Orientation (Patient))
        seg.PatientOrientation = first.get("PatientOrientation", "")
    _drop_unrequested(seg, first, copy_attributes)
    copy_listed_attributes(seg, first, copy_attributes)
    return seg


def _orientation_letters(cosines: Sequence[float]) -> str:
    """Patient-orientation letters of a direction (LPS), strongest component first (PS3.3 C.7.6.1.1.1)."""
    letters = [("L", "R"), ("P", "A"), ("H", "F")]
    order = sorted(range(3), key=lambda i: -abs(float(cosines[i])))
    return "".join(letters[i][0 if float(cosines[i]) > 0 else 1] for i in order if abs(float(cosines[i])) > 1e-3)


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation, else derived from Image Orientation (Patient), else None (unknown).

    Args:
        source: the source dataset.

    Returns:
        ``(row direction, column direction)`` letters (e.g. ``("L", "P")``), or None.
    """
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    iop = source.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        return _orientation_letters(iop[:3]), _orientation_letters(iop[3:])
    return None


def build_overlay(source: Dataset, rgb: np.ndarray, mask: np.ndarray, algorithm: AlgorithmInfo,
                  copy_attributes: Sequence[str] = ()) -> hd.sc.SCImage:
    """Secondary-capture RGB overlay (mask blended in red) for viewers without SEG support.

    It references its source (Source Image Sequence), keeps its pixel spacing and patient orientation, and
    carries the source's lossy-compression history (the overlay itself is stored uncompressed). Patient and
    study attributes: those of the SC IOD's Patient and General Study modules, plus ``copy_attributes``.

    Args:
        source: the source image.
        rgb: the source image for display, ``(H, W, 3)`` with values in 0..255.
        mask: ``(H, W)`` bool mask, blended in red.
        algorithm: the algorithm identity.
        copy_attributes: source attribute keywords copied into the overlay.

    Returns:
        The highdicom Secondary Capture image.
    """
    out = rgb.astype(np.float32).copy()
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * red
    uid = str(source.SOPInstanceUID)
    orientation = patient_orientation(source)
    spacing = known_pixel_spacing(source)
    sc = hd.sc.SCImage(
        pixel_array=np.round(out).astype(np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        # highdicom takes one letter per direction; the full value (e.g. "LP" for an oblique slice) is set below
        patient_orientation=(orientation[0][0], orientation[1][0]) if orientation else ("L", "F"),
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=derived_uid(str(source.SeriesInstanceUID), algorithm, "overlay-series"),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=derived_uid(uid, algorithm, "overlay-instance"),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=_valid_date_time(source, "PatientBirthDate", "DA"),
        patient_sex=source.get("PatientSex") or None,
        accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"),
        study_date=_valid_date_time(source, "StudyDate", "DA"),
        study_time=_valid_date_time(source, "StudyTime", "TM"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        pixel_spacing=spacing,
        laterality=source.get("Laterality") or None,
        series_description=_series_description(source, algorithm, "overlay"),
        specific_character_set=output_character_set(source),
    )
    sc.PatientOrientation = list(orientation) if orientation is not None else ""
    if "Laterality" not in sc:
        sc.Laterality = ""  # General Series, type 2C: unknown
    sc.ImageType = ["DERIVED", "SECONDARY"]
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = uid
    item.PurposeOfReferenceCodeSequence = [SOURCE_FOR_PROCESSING]
    sc.SourceImageSequence = [item]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version} {algorithm.segment_label} mask blended in red"
    lossy = str(source.get("LossyImageCompression", "00")) == "01"
    sc.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        for key in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if key in source:
                setattr(sc, key, source[key].value)
    copy_listed_attributes(sc, source, copy_attributes)
    return sc


def read_back(ds: Dataset) -> hd.seg.Segmentation:
    """Parse a SEG with highdicom (raises if highdicom cannot).

    Args:
        ds: the SEG dataset (copied, not modified).

    Returns:
        The parsed highdicom Segmentation.
    """
    return hd.seg.Segmentation.from_dataset(ds, copy=True)


def seg_mask_for_source(seg: hd.seg.Segmentation, source_sop_instance_uid: str) -> np.ndarray:
    """The ``(H, W)`` bool mask of segment 1 for one source instance.

    Args:
        seg: the parsed SEG.
        source_sop_instance_uid: SOPInstanceUID of a source instance the SEG references.
    """
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_sop_instance_uid], segment_numbers=[1], combine_segments=False
    )
    return np.asarray(pixels[0, :, :, 0]).astype(bool)
