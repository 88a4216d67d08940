"""One driver loop for every transport (DICOMweb, local files, DIMSE): skip -> check -> group -> segment -> store ->
record.

A transport lists its instances and hands them to :meth:`Driver.process` in batches (a series of a PACS study, the
listener's spool, the local files), with a :class:`~.transport.Source` that says how to read, check, load and name
them and when a unit is ready, and a :class:`~.transport.Sink` that stores the results. The driver applies the one
skip rule (:func:`~.units.skip_reason`), refuses repeated SOPInstanceUIDs, groups the rest into SEG units
(:func:`~.units.group_units`), segments each ready unit, stores its SR and overlays before its SEG, and records every
outcome in the :class:`~.transport.RunSummary` and, when it has one, in the state file. A failure concerns the new
instances of its unit only; the others go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydicom.dataset import Dataset

from .reader import UnsupportedDicomError, failure_reason
from .state import FAILED, SKIPPED, StateDB
from .transport import RunSummary, Sink, Source
from .units import Segmenter, UnitResult, duplicate_uids, group_units, is_series_unit, skip_reason

__all__ = ["Driver"]

logger = logging.getLogger(__name__)


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
        """Whether an instance is to be processed; the others are counted as seen.

        Args:
            uid: its SOPInstanceUID (or file path, without a state file).
            summary: where the others are counted.
            retry_failed: also process an instance recorded as failed.

        Returns:
            True when it is new (or failed, with ``retry_failed``).
        """
        record = self.state.get(uid) if self.state is not None else None
        if record is None or (record.status == FAILED and retry_failed):
            return True
        summary.seen_before += 1
        return False

    def skip(self, uid: str, study: str, series: str, sop_class_uid: str, manufacturer: str,
             summary: RunSummary) -> bool:
        """Apply the skip rule (:func:`~.units.skip_reason`); a skipped instance is recorded.

        Args:
            uid: the instance's SOPInstanceUID (or file path).
            study: its StudyInstanceUID.
            series: its SeriesInstanceUID.
            sop_class_uid: its SOP Class UID.
            manufacturer: its Manufacturer.
            summary: where it is counted.

        Returns:
            True when it is skipped.
        """
        reason = skip_reason(sop_class_uid, manufacturer)
        if reason is None:
            return False
        if self.state is not None:
            self.state.mark_skipped(uid, study, series, reason)
        summary.skipped += 1
        return True

    def fail(self, keys: Sequence[str], study: str, series: str, reason: str, summary: RunSummary) -> None:
        """Record that instances could not be processed, and why.

        Args:
            keys: their SOPInstanceUIDs (or file paths).
            study: their StudyInstanceUID.
            series: their SeriesInstanceUID.
            reason: why.
            summary: where they are counted.
        """
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
