"""The DIMSE listener's spool as a :class:`~.driver.Source`: received images wait in ``<spool>/<SOPInstanceUID>.dcm``
until their SEG was accepted by the destination and recorded as done.

Series completeness: the slices of a volumetric series whose SEG was sent are kept in ``<spool>/kept/<series>`` for
``keep_series_s`` (counted from the series' latest SEG). A slice of that series arriving later (after the settle
time) gets a new SEG of the whole series, kept slices and late ones, which supersedes the earlier one (same SEG
series, new SOP instance, a higher Instance Number; the earlier SEG stays in the archive). After the retention, or
with ``keep_series_s`` 0, a late slice gets a SEG of the late slices only, with a WARNING naming the series.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .reader import check_metadata, read_dataset
from .state import DONE, FAILED, StateDB
from .transport import Source
from .units import Segmenter, UnitResult, is_series_unit, is_volumetric

__all__ = ["SpoolSource", "expire_kept", "kept_dir", "seg_instance_number", "spool_path"]

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _checked_uid(ds: Dataset, key: str) -> str:
    uid = str(ds.get(key, ""))
    if len(uid) > 64 or _UID.fullmatch(uid) is None:
        raise ValueError(f"not a valid {key}: {uid[:80]!r}")
    return uid


def spool_path(spool: Path, ds: Dataset) -> Path:
    """Where a received instance waits; the UID is never trusted as a path.

    Args:
        spool: the spool folder.
        ds: the instance's header.

    Returns:
        ``<spool>/<SOPInstanceUID>.dcm``.

    Raises:
        ValueError: the SOPInstanceUID is not a DICOM UID.
    """
    return spool / f"{_checked_uid(ds, 'SOPInstanceUID')}.dcm"


def kept_dir(spool: Path, ds: Dataset) -> Path:
    """Where the slices of a segmented series wait for late ones.

    Args:
        spool: the spool folder.
        ds: a slice's header.

    Returns:
        ``<spool>/kept/<SeriesInstanceUID>``.

    Raises:
        ValueError: the SeriesInstanceUID is not a DICOM UID.
    """
    return spool / "kept" / _checked_uid(ds, "SeriesInstanceUID")


def expire_kept(spool: Path, keep_series_s: float, now: float) -> None:
    """Remove each kept series whose latest SEG is older than the retention (a whole series at a time).

    Args:
        spool: the spool folder.
        keep_series_s: the retention in seconds.
        now: the time (``time.time``).
    """
    root = spool / "kept"
    if not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = list(folder.glob("*.dcm"))
        newest = max((p.stat().st_mtime for p in files), default=0.0)
        if files and now - newest < keep_series_s:
            continue
        shutil.rmtree(folder)
        logger.info("series %s: %d kept slice(s) removed after %.0f s (--keep-series); a later slice of it gets "
                    "a SEG of the late slices only", folder.name, len(files), keep_series_s)


def seg_instance_number(state: StateDB, segmenter: Segmenter, unit: Sequence[Dataset],
                        earlier: Sequence[str]) -> int | None:
    """Instance Number of the SEG of a volumetric unit whose series already has SEGs.

    Args:
        state: the state file (its series SEG numbers).
        segmenter: gives the unit's SEG UID.
        unit: the unit's headers.
        earlier: UIDs of the SEGs already sent for slices of the unit's series.

    Returns:
        One more than the highest recorded for the series (at least 2: a SEG sent before these numbers were
        recorded had 1), so a superseding whole-series SEG (or a late-only one) sorts after the SEGs it follows; the
        number recorded for this very SEG when it is made again (e.g. after a restart). None (the default numbering)
        for the first SEG of a series and for independent images.
    """
    if not is_series_unit(unit):
        return None
    numbers = state.seg_instance_numbers(str(unit[0].SeriesInstanceUID))
    seg_uid = segmenter.seg_uid([str(ds.SOPInstanceUID) for ds in unit])
    if seg_uid in numbers:
        return numbers[seg_uid]
    if not numbers and not earlier:
        return None
    return max([*numbers.values(), 1]) + 1


class SpoolSource(Source):
    """One poll of the spool: each item is a spool file, read whole; a settled unit is segmented, a failed image is
    moved to ``<spool>/failed``, a done or skipped one leaves the spool (a series' slices into ``kept/``).

    Args:
        spool: the spool folder.
        state: the state file.
        segmenter: gives SEG UIDs.
        name: how units are named (``<AE title> series <uid>``).
        settle_s: a series' newest file must be this old before the series is segmented.
        keep_series_s: how long a segmented series' slices are kept for late ones (0: none).
        now: the poll's time (``time.time``).
    """

    def __init__(self, spool: Path, state: StateDB, segmenter: Segmenter, name: str, settle_s: float,
                 keep_series_s: float, now: float) -> None:
        self.spool, self.state, self.segmenter, self.ae_name = spool, state, segmenter, name
        self.settle_s, self.keep_series_s, self.now = settle_s, keep_series_s, now
        self._paths: dict[str, Path] = {}  # SOPInstanceUID -> spool or kept file
        self._kept: set[str] = set()  # SOPInstanceUIDs of kept slices in this poll's units
        self._earlier: dict[tuple[str, ...], set[str]] = {}  # unit -> SEGs sent for its series before this poll
        self._sent: set[str] = set()  # SEGs sent in this poll (another geometry group is not a late slice)

    def read(self, item: Path) -> Dataset:
        """The whole spool file.

        Args:
            item: the spool file.

        Returns:
            Its dataset, with pixel data (its path is noted by SOPInstanceUID).
        """
        ds = read_dataset(item)
        self._paths[str(ds.get("SOPInstanceUID", ""))] = item
        return ds

    def key(self, item: Path, ds: Dataset | None) -> str:
        """The SOPInstanceUID (the file name when it cannot be read).

        Args:
            item: the spool file.
            ds: its dataset, or None when it could not be read.
        """
        return str(ds.get("SOPInstanceUID", item.stem)) if ds is not None else item.stem

    def check(self, ds: Dataset, item: Path) -> None:
        """Header checks (the pixel data is checked when the unit is segmented).

        Args:
            ds: the instance's dataset.
            item: its spool file (named in errors).
        """
        check_metadata(ds, str(item))

    def context(self, accepted: Sequence[Dataset]) -> list[Dataset]:
        """Headers of the kept slices of every volumetric series with a slice waiting (read only then: late slices
        are rare); one that cannot be read is removed (the series' SEG is redone without it).

        Args:
            accepted: the poll's headers that passed the checks.

        Returns:
            The kept slices' headers (without pixel data), except those of ``accepted``.
        """
        exclude = {str(ds.SOPInstanceUID) for ds in accepted}
        kept: list[Dataset] = []
        folders = {kept_dir(self.spool, ds) for ds in accepted if is_volumetric(ds)}
        for folder in sorted(f for f in folders if f.is_dir()):
            for path in sorted(folder.glob("*.dcm")):
                if path.stem in exclude:
                    continue
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                except (InvalidDicomError, EOFError, ValueError, KeyError, OSError):
                    logger.exception("kept slice %s cannot be read; removed (the series' SEG is redone without it)",
                                     path)
                    path.unlink(missing_ok=True)
                    continue
                self._paths[str(ds.SOPInstanceUID)] = path
                self._kept.add(str(ds.SOPInstanceUID))
                kept.append(ds)
        return kept

    def ready(self, unit: Sequence[Dataset], fresh: Sequence[Dataset]) -> bool:
        """Stable-series rule: no new slice for ``settle_s`` seconds (file times survive a restart).

        Args:
            unit: the unit.
            fresh: its new instances (their spool file times count).

        Returns:
            True for an independent image, or a series whose newest new file is at least ``settle_s`` old.
        """
        newest = max(self._paths[str(ds.SOPInstanceUID)].stat().st_mtime for ds in fresh)
        return not is_series_unit(unit) or self.now - newest >= self.settle_s

    def seg_instance_number(self, unit: Sequence[Dataset]) -> int | None:
        """:func:`seg_instance_number` (the SEGs sent for the series before this poll are noted for the log).

        Args:
            unit: the unit.
        """
        earlier: set[str] = set()
        if is_series_unit(unit):
            records = self.state.series_records(str(unit[0].SeriesInstanceUID), DONE)
            earlier = {r.seg_sop_instance_uid for r in records if r.seg_sop_instance_uid} - self._sent
        self._earlier[self._unit_key(unit)] = earlier
        return seg_instance_number(self.state, self.segmenter, unit, earlier)

    def load(self, unit: Sequence[Dataset]) -> list[Dataset]:
        """New slices as read; kept slices read again with their pixel data.

        Args:
            unit: the unit's headers.
        """
        return [read_dataset(self._paths[str(ds.SOPInstanceUID)]) if str(ds.SOPInstanceUID) in self._kept else ds
                for ds in unit]

    def name(self, unit: Sequence[Dataset]) -> str:
        """``<AE title> series <uid>``.

        Args:
            unit: the unit.
        """
        return f"{self.ae_name} series {unit[0].get('SeriesInstanceUID', '?')}"

    def release(self, items: Sequence[Path], outcome: str | None) -> None:
        """A failed image is moved to ``<spool>/failed`` (:meth:`~.listener.Listener.requeue_failed` brings it back);
        a skipped one, or one handled earlier (sent again), is deleted.

        Args:
            items: the spool files.
            outcome: :data:`~.state.SKIPPED`, :data:`~.state.FAILED`, or None (handled in an earlier pass).
        """
        if outcome != FAILED:
            for path in items:
                path.unlink()
            return
        failed_dir = self.spool / "failed"
        failed_dir.mkdir(exist_ok=True)
        for path in items:
            os.replace(path, failed_dir / path.name)

    def stored(self, unit: Sequence[Dataset], items: Sequence[Path], result: UnitResult | None) -> None:
        """After the SEG of ``unit`` was sent and recorded: keep a series' new slices (restarting its retention
        clock), delete the other files; log a SEG that supersedes or follows earlier ones.

        Args:
            unit: the unit.
            items: the spool files of its new instances.
            result: what was stored; None when the destination already held the SEG (nothing was sent).
        """
        self._keep(unit, items)
        if result is None:
            return
        seg_uid = str(result.seg.SOPInstanceUID)
        self._sent.add(seg_uid)
        series = unit[0].SeriesInstanceUID
        n_kept = sum(str(ds.SOPInstanceUID) in self._kept for ds in unit)
        earlier = ", ".join(sorted(self._earlier.get(self._unit_key(unit), ())))
        if n_kept:
            logger.warning("series %s: %d late instance(s) after SEG %s of %d; sent SEG %s of the whole series (%d "
                           "instances, Instance Number %s), which supersedes it (same SEG series; the earlier SEG "
                           "stays in the archive)", series, len(items), earlier or "?", n_kept, seg_uid, len(unit),
                           result.seg.InstanceNumber)
        elif earlier:  # also a second geometry group of the series (e.g. a localizer) segmented in a later poll
            logger.warning("series %s: %d late instance(s) after SEG %s; the series' earlier slices are no longer "
                           "kept (--keep-series %.0f s): sent SEG %s of the late instance(s) only", series,
                           len(items), earlier, self.keep_series_s, seg_uid)

    def _keep(self, unit: Sequence[Dataset], items: Sequence[Path]) -> None:
        if self.keep_series_s <= 0 or not is_series_unit(unit):
            for path in items:
                path.unlink()
            return
        folder = kept_dir(self.spool, unit[0])
        folder.mkdir(parents=True, exist_ok=True)
        for path in items:
            os.replace(path, folder / path.name)
        now = time.time()
        for path in folder.glob("*.dcm"):
            os.utime(path, (now, now))

    @staticmethod
    def _unit_key(unit: Sequence[Dataset]) -> tuple[str, ...]:
        return tuple(str(ds.SOPInstanceUID) for ds in unit)
