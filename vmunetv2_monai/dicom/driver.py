"""One driver loop for every transport (DICOMweb, local files, DIMSE): skip -> check -> group -> segment -> store ->
record.

A transport lists its instances and hands them to :meth:`Driver.process` in batches (a series of a PACS study, the
listener's spool, the local files), with a :class:`Source` that says how to read, check, load and name them and
when a unit is ready, and a :class:`Sink` that stores the results. The driver applies the one skip rule
(:func:`~.units.skip_reason`), refuses repeated SOPInstanceUIDs, groups the rest into SEG units
(:func:`~.units.group_units`), segments each ready unit, stores its SR and overlays before its SEG, and records every
outcome in the :class:`RunSummary` and, when it has one, in the state file. A failure concerns the new instances of
its unit only; the others go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from .reader import UnsupportedDicomError, check_metadata, failure_reason
from .state import FAILED, SKIPPED, StateDB
from .units import Segmenter, UnitResult, duplicate_uids, group_units, is_series_unit, skip_reason

__all__ = ["Driver", "RunSummary", "Sink", "Source", "backoff_delay"]

logger = logging.getLogger(__name__)


def backoff_delay(failures: int, interval: float, max_backoff: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures to reach a PACS or destination.

    Args:
        failures: consecutive failures so far (1 for the first).
        interval: the first wait (at least 1 s is used).
        max_backoff: the longest wait.

    Returns:
        ``interval`` doubled ``failures - 1`` times, capped at ``max_backoff``.
    """
    return min(max(interval, 1.0) * 2.0 ** (failures - 1), max_backoff)


@dataclass
class RunSummary:
    """What one pass did, by source instance (SOPInstanceUID, or file path for local files).

    Args:
        stored: instances whose SEG was stored.
        already_in_pacs: instances whose SEG the destination already held.
        failed: instance -> reason.
        skipped: number of instances skipped by the skip rule.
        seen_before: number of instances the state file records as handled.
        waiting: number of instances whose series has not settled.
    """

    stored: list[str] = field(default_factory=list)
    already_in_pacs: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    seen_before: int = 0
    waiting: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.stored)} instances segmented and stored, {len(self.already_in_pacs)} already in PACS, "
            f"{len(self.failed)} failed, {self.skipped} skipped, {self.seen_before} done earlier, "
            f"{self.waiting} waiting for their series to settle"
        )


class Source:
    """Where a batch of instances comes from. The defaults suit headers already in memory (each item is its
    dataset); transports override what differs."""

    def read(self, item: Any) -> Dataset:
        """The header of ``item`` (raise to refuse it)."""
        return item

    def key(self, item: Any, ds: Dataset | None) -> str:
        """What ``item`` is recorded under (``ds``: its header, None when it could not be read)."""
        return str(ds.get("SOPInstanceUID", "")) if ds is not None else str(item)

    def where(self, ds: Dataset | None) -> tuple[str, str]:
        """``(StudyInstanceUID, SeriesInstanceUID)`` recorded with ``ds`` in the state file."""
        if ds is None:
            return "", ""
        return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))

    def check(self, ds: Dataset, item: Any) -> None:
        """Refuse ``ds`` from its header (raise :class:`~.reader.UnsupportedDicomError`)."""
        check_metadata(ds, self.name([ds]))

    def context(self, accepted: Sequence[Dataset]) -> list[Dataset]:
        """Headers of instances already segmented that belong in the units of ``accepted`` (late slices)."""
        return []

    def ready(self, unit: Sequence[Dataset], fresh: Sequence[Dataset]) -> bool:
        """Whether ``unit`` (with the new instances ``fresh``) is to be segmented now."""
        return True

    def seg_instance_number(self, unit: Sequence[Dataset]) -> int | None:
        """Instance Number of the SEG of ``unit`` (None: the default); asked once per unit, before it is segmented."""
        return None

    def load(self, unit: Sequence[Dataset]) -> list[Dataset]:
        """The datasets of ``unit`` with their pixel data."""
        return list(unit)

    def name(self, unit: Sequence[Dataset]) -> str:
        """How ``unit`` is named in messages and refusals."""
        return f"SOPInstanceUID {unit[0].get('SOPInstanceUID', '?')}" if len(unit) == 1 else f"{len(unit)} images"

    def release(self, items: Sequence[Any], outcome: str | None) -> None:
        """Once items are recorded as ``outcome`` (:data:`~.state.SKIPPED`, :data:`~.state.FAILED`, or None: handled
        earlier) before any SEG: what the transport does with them."""

    def stored(self, unit: Sequence[Dataset], items: Sequence[Any], result: UnitResult | None) -> None:
        """Once the SEG of ``unit`` is recorded as done (``items``: its new instances; ``result`` None when the
        destination already held it)."""


class Sink:
    """Where results go. The defaults hold nothing and store nothing."""

    def available(self) -> bool:
        """False while stores are to wait (e.g. a destination being retried after a back-off)."""
        return True

    def holds(self, unit: Sequence[Dataset], seg_uid: str) -> bool:
        """Whether the destination already has the SEG ``seg_uid`` of ``unit``."""
        return False

    def unsent(self, source_uids: Sequence[str]) -> UnitResult | None:
        """A result made earlier for exactly these sources and not stored yet (stored without segmenting again)."""
        return None

    def store(self, result: UnitResult) -> bool:
        """Store the SR and overlays, then the SEG; False when the result is kept for a later try (nothing is
        recorded then)."""
        return True


class Driver:
    """The loop every transport shares: skip -> check -> group -> segment -> store -> record.

    Args:
        segmenter: makes the SEG (and SR, overlays) of a unit.
        sink: where results go.
        state: the state file (None: outcomes only in the summary, as for local files).
        stop_event: once set, no further unit is started.
        transient: exceptions that are the transport's, not the image's (re-raised, nothing recorded).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        sink: Sink,
        state: StateDB | None = None,
        stop_event: threading.Event | None = None,
        transient: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self.segmenter, self.sink, self.state = segmenter, sink, state
        self.stop_event = stop_event or threading.Event()
        self.transient = transient

    def needs_work(self, uid: str, summary: RunSummary, retry_failed: bool = False) -> bool:
        """Whether the instance ``uid`` is new (or failed, with ``retry_failed``); counts the others as seen."""
        record = self.state.get(uid) if self.state is not None else None
        if record is None or (record.status == FAILED and retry_failed):
            return True
        summary.seen_before += 1
        return False

    def skip(self, uid: str, study: str, series: str, sop_class_uid: str, manufacturer: str,
             summary: RunSummary) -> bool:
        """Apply the skip rule (:func:`~.units.skip_reason`); a skipped instance is recorded."""
        reason = skip_reason(sop_class_uid, manufacturer)
        if reason is None:
            return False
        if self.state is not None:
            self.state.mark_skipped(uid, study, series, reason)
        summary.skipped += 1
        return True

    def fail(self, keys: Sequence[str], study: str, series: str, reason: str, summary: RunSummary) -> None:
        """Record that ``keys`` could not be processed, and why."""
        if self.state is not None:
            self.state.mark_failed_many(list(keys), study, series, reason)
        summary.failed.update(dict.fromkeys(keys, reason))

    def process(self, source: Source, items: Iterable[Any], summary: RunSummary, retry_failed: bool = False) -> bool:
        """Screen ``items``, group them (with the source's context) and segment every ready unit.

        Args:
            source: the batch's transport hooks.
            items: the new instances (what ``source.read`` takes).
            summary: where outcomes are counted.
            retry_failed: also process instances recorded as failed.

        Returns:
            True when nothing of the batch is left waiting (unsettled series, or a stop).
        """
        accepted = self._screen(source, items, summary, retry_failed)
        keys = {id(ds): key for _, ds, key in accepted}
        item_of = {id(ds): item for item, ds, _ in accepted}
        complete = True
        for unit in group_units([ds for _, ds, _ in accepted] + source.context([ds for _, ds, _ in accepted])):
            fresh = [ds for ds in unit if id(ds) in keys]
            if not fresh:
                continue  # earlier slices alone: their SEG was made
            if not source.ready(unit, fresh):
                summary.waiting += len(fresh)
                complete = False
                continue
            if self.stop_event.is_set() or not self.sink.available():
                return False  # stopping, or the destination is down: the units wait
            self._unit(source, unit, [(item_of[id(ds)], keys[id(ds)]) for ds in fresh], summary)
        return complete

    def _screen(self, source: Source, items: Iterable[Any], summary: RunSummary,
                retry_failed: bool) -> list[tuple[Any, Dataset, str]]:
        """Read, drop what was handled, skip, check; then refuse repeated SOPInstanceUIDs."""
        accepted = []
        for item in items:
            ds = None
            try:
                ds = source.read(item)
                key = source.key(item, ds)
                if not self.needs_work(key, summary, retry_failed):
                    source.release([item], None)
                    continue
                if self.skip(key, *source.where(ds), str(ds.get("SOPClassUID", "")), str(ds.get("Manufacturer", "")),
                             summary):
                    source.release([item], SKIPPED)
                    continue
                source.check(ds, item)
            except Exception as exc:  # one bad instance must not stop the others; it is recorded
                key = source.key(item, ds)
                logger.warning("refused %s: %s", key, failure_reason(exc),
                               exc_info=not isinstance(exc, UnsupportedDicomError))
                self.fail([key], *source.where(ds), failure_reason(exc), summary)
                source.release([item], FAILED)
                continue
            accepted.append((item, ds, key))
        repeated = duplicate_uids((key, ds) for _, ds, key in accepted)
        for item, ds, key in accepted:
            if key in repeated:
                logger.warning("refused %s: %s", key, repeated[key])
                self.fail([key], *source.where(ds), repeated[key], summary)
                source.release([item], FAILED)
        return [entry for entry in accepted if entry[2] not in repeated]

    def _unit(self, source: Source, unit: list[Dataset], fresh: list[tuple[Any, str]], summary: RunSummary) -> None:
        """Segment one unit and store its results; the outcome is recorded for its new instances (and, when done, for
        every instance of the unit in the state file)."""
        uids = [str(ds.SOPInstanceUID) for ds in unit]
        items, keys = [item for item, _ in fresh], [key for _, key in fresh]
        study, series = source.where(unit[0])
        seg_uid = self.segmenter.seg_uid(uids)
        name = source.name(unit)
        try:
            if self.sink.holds(unit, seg_uid):
                self._done(source, unit, items, seg_uid, None)
                summary.already_in_pacs += keys
                logger.info("%s: SEG %s already there; recorded as done", name, seg_uid)
                return
            number = source.seg_instance_number(unit)
            result = self.sink.unsent(uids) or self.segmenter.segment(source.load(unit), name, number)
            if not self.sink.store(result):
                return  # kept by the sink for a later try
        except Exception as exc:
            if self.transient(exc):
                raise
            if isinstance(exc, UnsupportedDicomError):
                logger.warning("refused %s", exc)
            else:  # one bad unit must not stop the others
                logger.exception("failed %s", name)
            self.fail(keys, study, series, failure_reason(exc), summary)
            source.release(items, FAILED)
            return
        self._done(source, unit, items, seg_uid, result)
        summary.stored += keys

    def _done(self, source: Source, unit: list[Dataset], items: list[Any], seg_uid: str,
              result: UnitResult | None) -> None:
        if self.state is not None:
            number = int(result.seg.InstanceNumber) if result is not None and is_series_unit(unit) else None
            self.state.mark_done_many([str(ds.SOPInstanceUID) for ds in unit], *source.where(unit[0]), seg_uid,
                                      note=None if result is not None else "SEG already in PACS",
                                      seg_instance_number=number)
        source.stored(unit, items, result)
