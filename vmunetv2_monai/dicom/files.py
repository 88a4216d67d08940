"""DICOM files written atomically (:func:`vmunetv2_monai.files.atomic_write`: temporary file, fsync, rename)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom.dataset import Dataset

from ..files import atomic_write

__all__ = ["write_atomic"]

logger = logging.getLogger(__name__)


def write_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` as a DICOM file (with its File Meta Information) so that ``path`` is absent or complete.

    Args:
        ds: the dataset to write.
        path: the target file (mode 0644).

    Returns:
        ``path``.
    """
    written = atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
    logger.info("wrote %s", written)
    return written
