"""DICOMweb mode: find new images (QIDO), refuse from metadata, segment (WADO + VM-UNetV2), store DICOM SEG (STOW):
one SEG per independent image, one multi-frame SEG per settled CT/MR series, through the shared
:class:`~.driver.Driver`.

Never twice: a SQLite state file records every source instance as done / failed / skipped; the SEG's UIDs
are derived from the sources' UIDs, and before storing, the PACS is asked whether that SEG is already there
(which covers a crash between the store and the state update). Failures are recorded with their reason and
retried only with ``--retry-failed``; the other images go on. An unreachable PACS records nothing: the pass
is retried (with back-off under ``--watch``). Listing is incremental: only studies whose instance count
changed since they were last fully handled are opened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from .dicomweb import InstanceRef, PacsClient, PacsUnavailable, is_transient
from .driver import Driver
from .local import FolderSink
from .reader import check_metadata, failure_reason
from .state import DONE, FAILED, StateDB
from .transport import RunSummary, Sink, Source, backoff_delay
from .units import Segmenter, UnitResult, is_series_unit

__all__ = ["DicomwebSink", "Pipeline", "SeriesSource"]

logger = logging.getLogger(__name__)


class SeriesSource(Source):
    """The new instances of one series of a PACS study: headers from WADO-RS metadata, checked without pixel data,
    retrieved (WADO-RS) only when their unit is segmented.

    Args:
        client: the PACS.
        state: the state file (stable-series rule).
        study: StudyInstanceUID.
        series: SeriesInstanceUID.
        n_instances: instances of the series in its metadata (the stable-series rule counts them).
        settle_s: seconds without a new instance before a CT/MR series is segmented.
        earlier: headers of the series' instances segmented in earlier passes (a late slice is segmented with them).
    """

    def __init__(self, client: PacsClient, state: StateDB, study: str, series: str, n_instances: int,
                 settle_s: float, earlier: Sequence[Dataset] = ()) -> None:
        self.client, self.state, self.study, self.series = client, state, study, series
        self.n_instances, self.settle_s, self.earlier = n_instances, settle_s, list(earlier)

    def where(self, ds: Dataset | None) -> tuple[str, str]:
        """The study and series as listed.

        Args:
            ds: the header (unused: every instance of this source is in its series).

        Returns:
            ``(StudyInstanceUID, SeriesInstanceUID)`` of this source.
        """
        return self.study, self.series

    def check(self, ds: Dataset, item: Dataset) -> None:
        """Header checks; a missing pixel data element is checked on the retrieved instance (Orthanc's metadata
        leaves out encapsulated pixel data).

        Args:
            ds: the header from the series metadata.
            item: the listed item (the same header).

        Raises:
            UnsupportedDicomError: see :func:`~.reader.check_metadata`.
        """
        check_metadata(ds, f"{self.client.url} study {self.study}", pixel_data_in_header=False)

    def context(self, accepted: Sequence[Dataset]) -> list[Dataset]:
        """The series' earlier slices.

        Args:
            accepted: the batch's headers that passed the checks (unused).

        Returns:
            The headers of the series' instances segmented in earlier passes.
        """
        return self.earlier

    def ready(self, unit: Sequence[Dataset], fresh: Sequence[Dataset]) -> bool:
        """An independent image at once; a series once it has had no new instance for ``settle_s`` seconds.

        Args:
            unit: the unit.
            fresh: its new instances (fewer than ``unit``: late slices, logged as a WARNING).

        Returns:
            False while a series unit waits to settle.
        """
        if not is_series_unit(unit):
            return True
        if not self.state.series_settled(self.series, self.n_instances, self.settle_s):
            logger.info("series %s: %d instances, waiting %.0f s without new ones", self.series, self.n_instances,
                        self.settle_s)
            return False
        if len(fresh) < len(unit):
            logger.warning("series %s: %d late instance(s); a new SEG of all %d slices is made (the earlier SEG "
                           "stays)", self.series, len(fresh), len(unit))
        return True

    def load(self, unit: Sequence[Dataset]) -> list[Dataset]:
        """WADO-RS retrieve of every instance of ``unit``.

        Args:
            unit: its headers.

        Returns:
            The retrieved datasets, in the order of ``unit``.

        Raises:
            UnsupportedDicomError: an instance cannot be decoded here (see :meth:`~.dicomweb.PacsClient.retrieve`).
        """
        return [self.client.retrieve(self.study, self.series, str(ds.SOPInstanceUID)) for ds in unit]

    def name(self, unit: Sequence[Dataset]) -> str:
        """``<url> study <uid> series <uid>``.

        Args:
            unit: the unit (unused: every unit of this source is named by its series).

        Returns:
            The name.
        """
        return f"{self.client.url} study {self.study} series {self.series}"


class DicomwebSink(Sink):
    """STOW-RS to the PACS (SR and overlays, then the SEG), after an optional local copy of the SR and SEG.

    Args:
        client: the PACS.
        output_dir: also write each SR and SEG here (atomically).
    """

    def __init__(self, client: PacsClient, output_dir: str | os.PathLike[str] | None = None) -> None:
        self.client = client
        self.copy = FolderSink(output_dir, extras=False) if output_dir is not None else None

    def holds(self, unit: Sequence[Dataset], seg_uid: str) -> bool:
        """QIDO-RS: is the SEG already in the unit's study?

        Args:
            unit: the unit.
            seg_uid: its SEG's SOPInstanceUID.

        Returns:
            True when the PACS holds the SEG in the study of ``unit[0]``.
        """
        return self.client.has_instance(str(unit[0].StudyInstanceUID), seg_uid)

    def store(self, result: UnitResult) -> bool:
        """Write the local copy, then STOW-RS the extras first, so that "SEG present" implies everything is.

        Args:
            result: the unit's objects.

        Returns:
            True (a failed store raises).

        Raises:
            RuntimeError: the PACS refused or did not acknowledge an object (see :meth:`~.dicomweb.PacsClient.store`).
        """
        if self.copy is not None:
            self.copy.store(result)
        for extra in result.extras():
            self.client.store(extra)
        self.client.store(result.seg)
        return True


class Pipeline:
    """One PACS, one model, one state file.

    Args:
        client: the PACS.
        segmenter: the model and SEG rules.
        state: the state file.
        output_dir: also write each SR and SEG here.
        settle_s: stable-series rule (seconds without a new instance).
        study_filters: QIDO filters of the study listing, e.g. ``{"StudyDate": "20240101-"}``.
    """

    def __init__(
        self,
        client: PacsClient,
        segmenter: Segmenter,
        state: StateDB,
        output_dir: str | os.PathLike[str] | None = None,
        settle_s: float = 60.0,
        study_filters: dict[str, str] | None = None,
    ) -> None:
        self.client, self.state = client, state
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.settle_s = settle_s
        self.study_filters = dict(study_filters or {})
        self.stop_event = threading.Event()  # set from a signal handler; checked between units
        self.driver = Driver(segmenter, DicomwebSink(client, output_dir), state, self.stop_event, is_transient)

    def run_once(self, retry_failed: bool = False) -> RunSummary:
        """One pass over the studies whose instance count changed since they were last fully handled (plus, with
        ``retry_failed``, those holding failed instances or failed as a whole).

        A study that cannot be processed (e.g. its instances cannot be listed) is recorded as failed and not opened
        again until ``retry_failed`` or a change of its instance count; the others go on.

        Args:
            retry_failed: also retry the instances and studies recorded as failed.

        Returns:
            What the pass did.

        Raises:
            PacsUnavailable: the PACS cannot be reached; nothing is then recorded as failed.
        """
        summary = RunSummary()
        try:
            retry_studies = set()
            if retry_failed:
                retry_studies = {r.study_instance_uid for r in self.state.records(FAILED)}
                retry_studies |= {f.study_instance_uid for f in self.state.study_failures()}
            studies = list(self.client.iter_studies(self.study_filters))
            changed = [(uid, n) for uid, n in studies if uid in retry_studies or self.state.study_count(uid) != n]
            logger.info("PACS lists %d studies, %d new or changed", len(studies), len(changed))
            for study_uid, n_instances in changed:
                if self.stop_event.is_set():
                    logger.info("stop requested; remaining studies are left for the next pass")
                    break
                try:
                    complete = self._process_study(study_uid, retry_failed, summary)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    reason = f"study {study_uid}: {failure_reason(exc)}"
                    logger.exception("failed %s; it is skipped until --retry-failed or a change of the study",
                                     reason)
                    self.state.mark_study_failed(study_uid, reason)
                    summary.failed[study_uid] = reason
                    self.state.set_study_count(study_uid, n_instances)
                    continue
                if complete:
                    self.state.clear_study_failure(study_uid)
                    self.state.set_study_count(study_uid, n_instances)
        except Exception as exc:
            if is_transient(exc):
                raise PacsUnavailable(f"{self.client.url}: {type(exc).__name__}: {exc}") from exc
            raise
        logger.info("pass finished: %s", summary)
        return summary

    def _process_study(self, study_uid: str, retry_failed: bool, summary: RunSummary) -> bool:
        """New images of one study (the skip rule applied to the QIDO listing, before any metadata is fetched);
        True when nothing in it is left waiting for a later pass."""
        by_series: dict[str, list[InstanceRef]] = {}
        for ref in self.client.study_instances(study_uid):
            sop = ref.sop_instance_uid
            if not self.driver.needs_work(sop, summary, retry_failed) or self.driver.skip(
                    sop, study_uid, ref.series_instance_uid, ref.sop_class_uid, ref.manufacturer, summary):
                continue
            by_series.setdefault(ref.series_instance_uid, []).append(ref)
        complete = True
        for series_uid, refs in by_series.items():
            if self.stop_event.is_set():
                return False
            complete &= self._process_series(study_uid, series_uid, {r.sop_instance_uid for r in refs}, summary,
                                             retry_failed)
        return complete

    def _process_series(self, study_uid: str, series_uid: str, new: set[str], summary: RunSummary,
                        retry_failed: bool) -> bool:
        """The new instances ``new`` of one series through the driver, with the series' earlier slices."""
        try:
            headers, unreadable = self.client.series_metadata(study_uid, series_uid)
        except Exception as exc:  # e.g. a SeriesInstanceUID that dicomweb-client refuses to put in a URL
            if is_transient(exc):
                raise
            reason = f"series {series_uid}: {failure_reason(exc)}"
            logger.warning("failed %s", reason)
            self.driver.fail(sorted(new), study_uid, series_uid, reason, summary)
            return True
        for sop in sorted(new - set(headers)):
            reason = unreadable.get(sop, "listed by QIDO but missing from the series metadata")
            self.driver.fail([sop], study_uid, series_uid, reason, summary)
        earlier = [ds for sop, ds in headers.items() if sop not in new and self._done(sop)]
        source = SeriesSource(self.client, self.state, study_uid, series_uid, len(headers) + len(unreadable),
                              self.settle_s, earlier)
        return self.driver.process(source, [ds for sop, ds in headers.items() if sop in new], summary, retry_failed)

    def _done(self, sop: str) -> bool:
        record = self.state.get(sop)
        return record is not None and record.status == DONE

    def watch(self, retry_failed: bool = False, interval: float = 30.0, max_backoff: float = 600.0,
              keep_watching: bool = True) -> int:
        """Passes every ``interval`` seconds until :attr:`stop_event` is set (one pass without ``keep_watching``).

        Args:
            retry_failed: the first pass retries what failed (later passes do not retry its failures again).
            interval: seconds between passes.
            max_backoff: longest wait after repeated failures to reach the PACS (doubling from ``interval``).
            keep_watching: False for a single pass.

        Returns:
            Exit status of the last pass: 0 when nothing failed, 1 if something did, 2 if the PACS could not be
            reached (0 when stopped between passes).
        """
        failures = 0
        while True:
            try:
                summary = self.run_once(retry_failed=retry_failed)
                retry_failed, failures = False, 0
                status, delay = (1 if summary.failed else 0), interval
            except PacsUnavailable as exc:
                failures += 1
                status, delay = 2, backoff_delay(failures, interval, max_backoff)
                logger.warning("PACS unavailable (failure %d in a row): %s; next try in %.0f s", failures, exc, delay)
            if not keep_watching or self.stop_event.is_set():
                return status
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stop_event.is_set():
                time.sleep(min(1.0, delay))  # not Event.wait: the event is set from a signal handler
            if self.stop_event.is_set():
                return 0
