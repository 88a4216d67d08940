"""Atomic local writes of DICOM files (temporary file in the target directory, fsync, ``os.replace``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

FILE_MODE = 0o644


def _write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """``write(fh)`` into a temporary file beside ``path`` (mode 0644), fsync, rename: never a partial ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600; outputs are for other readers (PACS import, viewers)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return path


def write_atomic(ds: Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` as a DICOM file (mode 0644) so that ``path`` is either absent or complete, never partial."""
    return _write_atomic(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


def copy_atomic(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy the file ``source`` to ``path`` in chunks (never whole in memory), atomically as :func:`write_atomic`."""
    def copy(fh: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh)

    return _write_atomic(path, copy)
