"""Local mode (``--files``): DICOM files and folders in, ``<output_dir>/<SOPInstanceUID>.dcm`` out, through the
shared :class:`~.driver.Driver` (no state file: outcomes are reported in the summary, by file path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

from .driver import Driver
from .files import write_atomic
from .reader import check_supported, read_dataset
from .transport import RunSummary, Sink, Source
from .units import Segmenter, UnitResult

__all__ = ["FileSource", "FolderSink", "dicom_files", "segment_files"]

logger = logging.getLogger(__name__)


def dicom_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``--files`` inputs as files.

    Args:
        paths: files and folders.

    Returns:
        A file as given; a folder scanned recursively (sorted) for DICOM files, other files in it skipped with an
        INFO line (a file named explicitly is always tried, and refused by name if unreadable).
    """
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(path)
            continue
        found = 0
        for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
            if is_dicom(candidate):
                out.append(candidate)
                found += 1
            else:
                logger.info("skipped %s: not a DICOM file (no DICM prefix)", candidate)
        logger.info("%s: %d DICOM file(s) found", path, found)
    return out


class FileSource(Source):
    """Local DICOM files: each is read whole and checked with its pixel data
    (:func:`~.reader.check_supported`); outcomes are recorded by file path."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}  # id(dataset) -> its path, for names

    def read(self, item: Path) -> Dataset:
        """Read the file ``item`` (unreadable: :class:`~.reader.UnsupportedDicomError` naming it).

        Args:
            item: the file.

        Returns:
            The whole dataset, pixel data included.

        Raises:
            UnsupportedDicomError: the file cannot be read as DICOM (see :func:`~.reader.read_dataset`).
        """
        ds = read_dataset(item)
        self._paths[id(ds)] = str(item)
        return ds

    def key(self, item: Path, ds: Dataset | None) -> str:
        """The file's path, as given.

        Args:
            item: the file.
            ds: its dataset (unused: the path names it even when unreadable).

        Returns:
            ``str(item)``.
        """
        return str(item)

    def check(self, ds: Dataset, item: Path) -> None:
        """Header and pixel data checks (the pixel data is there: truncated or empty pixel data is refused here).

        Args:
            ds: the dataset read from ``item``.
            item: the file, which names it in the refusal.

        Raises:
            UnsupportedDicomError: see :func:`~.reader.check_supported`.
        """
        check_supported(ds, str(item))

    def name(self, unit: Sequence[Dataset]) -> str:
        """The file's path, or ``series of N files``.

        Args:
            unit: datasets read by :meth:`read`.

        Returns:
            The name.
        """
        return self._paths[id(unit[0])] if len(unit) == 1 else f"series of {len(unit)} files"


class FolderSink(Sink):
    """Writes every result atomically to ``<folder>/<SOPInstanceUID>.dcm``: overlays and SR, then the SEG.

    Args:
        folder: the output folder (created when missing).
        extras: also write the overlays and SR (False: the SR only, with the SEG).
    """

    def __init__(self, folder: str | os.PathLike[str], extras: bool = True) -> None:
        self.folder = Path(folder)
        self.extras = extras

    def store(self, result: UnitResult) -> bool:
        """Write the result's objects; always True (a failed write raises).

        Args:
            result: the unit's objects.

        Returns:
            True.
        """
        for ds in (result.extras() if self.extras else result.reports) + [result.seg]:
            write_atomic(ds, self.folder / f"{ds.SOPInstanceUID}.dcm")
        return True


def segment_files(
    paths: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str], segmenter: Segmenter
) -> RunSummary:
    """Local mode: one SEG (with its SR, overlays if asked for) per image, or per volumetric series among the files.

    Files are read and checked first (pixel data included), then SOPInstanceUIDs repeated among the valid files are
    refused, so a broken copy never keeps the good one from its SEG. Non-images and this pipeline's own outputs are
    skipped (:func:`~.units.skip_reason`). A file that cannot be read or processed is reported with its reason and
    the others go on.

    Args:
        paths: files and folders (:func:`dicom_files`).
        output_dir: where ``<SOPInstanceUID>.dcm`` files are written (atomically).
        segmenter: the model and SEG rules.

    Returns:
        The summary, by file path.
    """
    summary = RunSummary()
    Driver(segmenter, FolderSink(output_dir)).process(FileSource(), dicom_files(paths), summary)
    logger.info("files finished: %s", summary)
    return summary
