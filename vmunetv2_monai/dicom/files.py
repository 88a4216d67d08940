"""Atomic local writes of DICOM files (temporary file in the target directory, fsync, ``os.replace``)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

FILE_MODE = 0o644


def write_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` as a DICOM file (mode 0644) so that ``path`` is either absent or complete, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600; outputs are for other readers (PACS import, viewers)
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return path
