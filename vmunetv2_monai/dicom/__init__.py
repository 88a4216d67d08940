"""DICOM in, DICOM SEG out: reading images, writing SEGs and their SR measurement reports, a DICOMweb PACS pipeline
and a DIMSE listener (needs the ``dicom`` extra)."""

from .algorithm import AlgorithmInfo
from .reader import DicomImage, UnsupportedDicomError, load_image, to_model_input
from .seg import build_overlay, build_segmentation, seg_uid_for
from .sr import build_report, sr_uid_for
from .units import Segmenter, group_units
from .voi import GreyWindow, grey_window

__all__ = [
    "AlgorithmInfo",
    "DicomImage",
    "GreyWindow",
    "Segmenter",
    "UnsupportedDicomError",
    "build_overlay",
    "build_report",
    "build_segmentation",
    "grey_window",
    "group_units",
    "load_image",
    "seg_uid_for",
    "sr_uid_for",
    "to_model_input",
]
