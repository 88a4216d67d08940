"""DICOM in, DICOM SEG out: reading images, writing SEGs, and a DICOMweb PACS pipeline (needs the ``dicom`` extra)."""

from .algorithm import AlgorithmInfo
from .reader import DicomImage, UnsupportedDicomError, load_image, to_model_input
from .seg import build_overlay, build_segmentation, seg_uid_for

__all__ = [
    "AlgorithmInfo",
    "DicomImage",
    "UnsupportedDicomError",
    "build_overlay",
    "build_segmentation",
    "load_image",
    "seg_uid_for",
    "to_model_input",
]
