"""DIMSE listener: a Storage SCP (pynetdicom) that receives images by C-STORE, segments them with the same units
and state file as the DICOMweb pipeline, and C-STOREs each SEG (and overlays) to a destination AE.

Nothing lost: an image is acknowledged only once it is on disk in the spool directory (atomic write, named by
its validated SOPInstanceUID), and it leaves the spool only after its SEG was accepted by the destination and
recorded as done. Never twice: the state file says what is done, and a SEG's UID is derived from its sources,
so a SEG re-sent after a kill between the store and the state update is the same object (a PACS keeps one).

What an administrator sets (:class:`ListenerLimits`): the calling AE titles allowed (others, and a called AE title
other than ours, are rejected at association); the largest object accepted (a bigger one is aborted while it
arrives: datasets are streamed to a file, never held whole in memory); a spool size above which new associations
are rejected (transient, "temporary congestion"). C-ECHO (Verification) is answered. A destination that is down
is retried with a bounded exponential back-off.

Series completeness: the slices of a volumetric series whose SEG was sent are kept in ``<spool>/kept/<series>``
for ``keep_series_s`` (counted from the series' latest SEG). A slice of that series arriving later (after
``--settle``) gets a new SEG of the whole series, kept slices and late ones, which supersedes the earlier one
(same SEG series, new SOP instance; the earlier SEG stays in the archive). After the retention, or with
``keep_series_s`` 0, a late slice gets a SEG of the late slices only, with a WARNING naming the series.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from ..files import copy_atomic, remove_stale_temps_in
from .reader import UnsupportedDicomError, check_metadata, failure_reason, read_dataset
from .state import DONE, FAILED, StateDB
from .units import Segmenter, UnitResult, group_units, is_volumetric, skip_reason

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: A-ASSOCIATE-RJ (result, source, diagnostic): transient, service provider (presentation), temporary congestion.
REJECT_CONGESTION = (0x02, 0x03, 0x01)
MB = 1024 * 1024


def backoff_delay(failures: int, interval: float, max_backoff: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling from ``interval`` (at least 1 s), capped."""
    return min(max(interval, 1.0) * 2.0 ** (failures - 1), max_backoff)


@dataclass(frozen=True)
class ListenerLimits:
    """What the Storage SCP accepts: ``calling_aets`` (empty: any calling AE title; the called AE title must always
    be ours), objects up to ``max_object_bytes``, new associations while the spool holds at most
    ``spool_max_bytes``; a destination that is down is retried after :func:`backoff_delay` up to ``max_backoff_s``;
    the slices of a series whose SEG was sent are kept ``keep_series_s`` seconds to redo it with late slices (0:
    none kept). Kept slices count towards ``spool_max_bytes``.
    """

    calling_aets: tuple[str, ...] = ()
    max_object_bytes: int = 256 * MB
    spool_max_bytes: int = 10 * 1024 * MB
    max_backoff_s: float = 600.0
    keep_series_s: float = 3600.0

    def __post_init__(self) -> None:
        for title in self.calling_aets:
            if not 0 < len(title.strip()) <= 16 or "\\" in title:
                raise ValueError(f"calling AE title {title!r}: 1 to 16 characters, no backslash")
        if self.max_object_bytes <= 0 or self.spool_max_bytes <= 0 or self.max_backoff_s <= 0:
            raise ValueError(f"limits must be positive: {self}")
        if not self.keep_series_s >= 0:
            raise ValueError(f"keep_series_s must be >= 0 seconds, got {self.keep_series_s}")


@dataclass
class _Transfer:
    """Bytes of the dataset now arriving on one association."""

    received: int = 0
    aborted: bool = False


@dataclass(frozen=True)
class RemoteAE:
    """A DICOM application entity to send to: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RemoteAE:
        """``"ORTHANC@127.0.0.1:4242"`` -> RemoteAE."""
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):([0-9]{1,5})", text)
        if match is None:
            raise ValueError(f"destination {text!r}: expected AET@host:port")
        return cls(match.group(1), match.group(2), int(match.group(3)))


def _checked_uid(ds: Dataset, key: str) -> str:
    uid = str(ds.get(key, ""))
    if len(uid) > 64 or _UID.fullmatch(uid) is None:
        raise ValueError(f"not a valid {key}: {uid[:80]!r}")
    return uid


def spool_path(spool: Path, ds: Dataset) -> Path:
    """Where a received instance is kept: ``<spool>/<SOPInstanceUID>.dcm``; the UID is never trusted as a path."""
    return spool / f"{_checked_uid(ds, 'SOPInstanceUID')}.dcm"


def kept_dir(spool: Path, ds: Dataset) -> Path:
    """Where the slices of a segmented series wait for late ones: ``<spool>/kept/<SeriesInstanceUID>`` (checked)."""
    return spool / "kept" / _checked_uid(ds, "SeriesInstanceUID")


class Listener:
    """Storage SCP on ``host:port`` (127.0.0.1 by default) + a worker that empties the spool every
    ``poll_interval`` seconds."""

    def __init__(
        self,
        segmenter: Segmenter,
        state: StateDB,
        spool: str | os.PathLike[str],
        destination: RemoteAE,
        ae_title: str = "VMUNETV2",
        host: str = "127.0.0.1",
        port: int = 11112,
        settle_s: float = 60.0,
        limits: ListenerLimits | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.segmenter, self.state, self.destination = segmenter, state, destination
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        remove_stale_temps_in(self.spool)  # a copy_atomic cut short by a kill: the image was not acked
        self.ae_title, self.host, self.port, self.settle_s = ae_title, host, port, settle_s
        self.limits = limits or ListenerLimits()
        self.poll_interval = poll_interval
        self.stop_event = threading.Event()
        self._server = None
        #: SEGs whose C-STORE failed, by their source UIDs: re-sent on the next poll without segmenting again.
        self._unsent: dict[tuple[str, ...], UnitResult] = {}
        #: datasets arriving, by association (each association runs in its own thread)
        self._transfers: dict[int, _Transfer] = {}
        #: consecutive failed sends to the destination, and when (time.monotonic) the next one may be tried
        self._send_failures, self._send_retry_at = 0, 0.0
        #: SEGs sent in the current poll (another geometry group of the same series is not a late slice)
        self._sent_in_poll: set[str] = set()

    def spool_bytes(self) -> int:
        """Bytes held in the spool (waiting, failed and kept images)."""
        return sum(p.stat().st_size for p in self.spool.rglob("*") if p.is_file())

    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ: rejected (transient) while the spool is above its watermark."""
        held = self.spool_bytes()
        if held > self.limits.spool_max_bytes:
            logger.warning("association from %s rejected: the spool holds %.1f MB, above the %.1f MB watermark",
                           event.assoc.requestor.primitive.calling_ae_title, held / MB,
                           self.limits.spool_max_bytes / MB)
            event.assoc.acse.send_reject(*REJECT_CONGESTION)
            event.assoc.kill()  # as pynetdicom after its own rejections: the A-ASSOCIATE-RJ is sent, then the DUL stops

    def _on_pdu(self, event: evt.Event) -> None:
        """Count the bytes of the dataset arriving; abort the association once it is above the object size limit
        (pynetdicom streams it to a temporary file meanwhile, so nothing large is held in memory)."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        transfer = self._transfers.setdefault(id(event.assoc), _Transfer())
        for item in event.pdu.presentation_data_value_items:
            data = item.presentation_data_value or b""
            if not data or data[0] & 1:  # command set fragment
                continue
            transfer.received += len(data) - 1
            if transfer.received > self.limits.max_object_bytes and not transfer.aborted:
                transfer.aborted = True
                logger.warning("C-STORE from %s aborted: object larger than the %.1f MB limit",
                               event.assoc.requestor.ae_title, self.limits.max_object_bytes / MB)
                event.assoc.abort()
            if data[0] & 2:  # last fragment of this dataset
                transfer.received = 0

    def _on_closed(self, event: evt.Event) -> None:
        """Connection closed: forget its transfer; the partial file of a dataset that did not arrive whole (we
        aborted it, or the peer dropped or aborted the association) is removed. pynetdicom 3 keeps it in the
        temporary folder as ``dimse.message._data_set_file`` and deletes it only after a complete C-STORE."""
        self._transfers.pop(id(event.assoc), None)
        partial = getattr(getattr(event.assoc.dimse, "message", None), "_data_set_file", None)
        if partial is not None:
            partial.close()
            Path(partial.name).unlink(missing_ok=True)
            logger.info("removed the partial dataset %s", partial.name)

    def _on_store(self, event: evt.Event) -> int:
        """C-STORE: keep the instance on disk (copied from the file pynetdicom streamed it to) before acknowledging
        it; refuse one above the object size limit."""
        caller = event.assoc.requestor.ae_title
        received = Path(event.dataset_path)
        size = received.stat().st_size
        if size > self.limits.max_object_bytes:
            logger.warning("C-STORE from %s refused: %.1f MB, above the %.1f MB limit", caller, size / MB,
                           self.limits.max_object_bytes / MB)
            return STATUS_OUT_OF_RESOURCES
        try:
            path = spool_path(self.spool, pydicom.dcmread(received, stop_before_pixels=True))
        except (ValueError, InvalidDicomError, EOFError) as exc:
            logger.warning("C-STORE from %s refused: %s", caller, exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            copy_atomic(received, path)
        except OSError:
            logger.exception("C-STORE of %s: cannot write the spool file", path.name)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def start(self) -> None:
        """Start the Storage SCP (and Verification SCP, for C-ECHO) in the background."""
        _config.STORE_RECV_CHUNKED_DATASET = True  # datasets go to a file as they arrive, not into memory
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.limits.calling_aets)
        ae.add_supported_context(Verification)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested),
                    (evt.EVT_PDU_RECV, self._on_pdu), (evt.EVT_CONN_CLOSE, self._on_closed)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        callers = ", ".join(self.limits.calling_aets) or "any calling AE title"
        logger.info("Storage SCP %s listening on %s:%d (accepting %s; objects up to %.1f MB; spool watermark %.1f "
                    "MB); results go to %s", self.ae_title, self.host, self.port, callers,
                    self.limits.max_object_bytes / MB, self.limits.spool_max_bytes / MB, self.destination)

    def shutdown(self) -> None:
        """Stop the SCP."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def send(self, datasets: list[Dataset]) -> None:
        """C-STORE ``datasets`` to the destination on one association; raises unless every one succeeded."""
        ae = AE(ae_title=self.ae_title)
        for sop_class in (SegmentationStorage, SecondaryCaptureImageStorage, Comprehensive3DSRStorage):
            ae.add_requested_context(sop_class)
        dest = self.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"association with {dest} not established")
        try:
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            for ds in datasets:
                if str(ds.SOPClassUID) not in accepted:
                    if str(ds.SOPClassUID) == str(Comprehensive3DSRStorage):  # an extra: the SEG still goes
                        logger.warning("%s does not accept Comprehensive 3D SR Storage: SR %s not sent (--no-sr "
                                       "stops making them)", dest, ds.SOPInstanceUID)
                        continue
                    raise ConnectionError(f"{dest} does not accept {ds.SOPClassUID.name} ({ds.SOPInstanceUID})")
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None or (code != 0 and not 0xB000 <= code <= 0xBFFF):
                    raise ConnectionError(f"C-STORE of {ds.SOPInstanceUID} to {dest}: status {code}")
        finally:
            assoc.release()

    def poll_once(self) -> int:
        """Segment every settled unit in the spool; returns the number of source instances finished.

        An image that cannot be processed is recorded as failed with its reason and moved to ``<spool>/failed``
        (:meth:`requeue_failed` brings it back); the others go on.
        """
        finished = 0
        now = time.time()
        self._sent_in_poll = set()
        self._expire_kept(now)
        candidates: dict[str, tuple[Path, Dataset]] = {}
        for path in sorted(self.spool.glob("[!.]*.dcm")):  # not the temporary file of a copy_atomic
            ds = None
            try:
                ds = read_dataset(path)
                uid = str(ds.SOPInstanceUID)
                record = self.state.get(uid)
                if record is not None and record.status != FAILED:  # resent after it was done
                    path.unlink()
                    continue
                reason = skip_reason(str(ds.get("SOPClassUID", "")), str(ds.get("Manufacturer", "")))
                if reason is not None:
                    self.state.mark_skipped(uid, str(ds.get("StudyInstanceUID", "")),
                                            str(ds.get("SeriesInstanceUID", "")), reason)
                    path.unlink()
                    continue
                check_metadata(ds, str(path))
            except Exception as exc:  # one bad image must not stop the listener; it is kept and recorded
                if not isinstance(exc, UnsupportedDicomError):
                    logger.exception("cannot process %s", path.name)
                self._fail([path], failure_reason(exc), [ds])
                continue
            candidates[uid] = (path, ds)
        kept = self._kept_headers([ds for _, ds in candidates.values()], set(candidates))
        units = group_units([ds for _, ds in candidates.values()] + [ds for _, ds in kept.values()])
        path_of = {uid: path for uid, (path, _) in (*kept.items(), *candidates.items())}
        current = {tuple(str(ds.SOPInstanceUID) for ds in unit) for unit in units}
        self._unsent = {k: v for k, v in self._unsent.items() if k in current}  # a unit that changed is redone
        for unit in units:
            fresh = [candidates[str(ds.SOPInstanceUID)][0] for ds in unit if str(ds.SOPInstanceUID) in candidates]
            if not fresh:
                continue  # kept slices alone: their SEG was sent
            newest = max(p.stat().st_mtime for p in fresh)
            if (len(unit) > 1 or is_volumetric(unit[0])) and now - newest < self.settle_s:
                continue  # stable-series rule: no new slice for settle_s seconds (file times survive a restart)
            if self.stop_event.is_set() or time.monotonic() < self._send_retry_at:
                break  # stopping, or the destination is down: the units wait in the spool
            finished += self._process(unit, [path_of[str(ds.SOPInstanceUID)] for ds in unit], set(kept))
        return finished

    def _kept_headers(self, arrived: list[Dataset], exclude: set[str]) -> dict[str, tuple[Path, Dataset]]:
        """SOPInstanceUID -> (path, header without pixels) of the kept slices of every volumetric series that has a
        slice waiting in the spool (read only then: late slices are rare)."""
        kept: dict[str, tuple[Path, Dataset]] = {}
        folders = {kept_dir(self.spool, ds) for ds in arrived if is_volumetric(ds)}
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
                kept[str(ds.SOPInstanceUID)] = (path, ds)
        return kept

    def _expire_kept(self, now: float) -> None:
        """Remove each kept series whose latest SEG is more than ``keep_series_s`` old (a whole series at a time)."""
        root = self.spool / "kept"
        if not root.is_dir():
            return
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = list(folder.glob("*.dcm"))
            newest = max((p.stat().st_mtime for p in files), default=0.0)
            if files and now - newest < self.limits.keep_series_s:
                continue
            shutil.rmtree(folder)
            logger.info("series %s: %d kept slice(s) removed after %.0f s (--keep-series); a later slice of it gets "
                        "a SEG of the late slices only", folder.name, len(files), self.limits.keep_series_s)

    def _keep(self, unit: list[Dataset], fresh: list[Path]) -> None:
        """After the SEG of a volumetric unit was sent: move its new slices into ``<spool>/kept/<series>`` and restart
        the series' retention clock; other units' files (and everything with ``keep_series_s`` 0) are deleted."""
        if self.limits.keep_series_s <= 0 or not (len(unit) > 1 or is_volumetric(unit[0])):
            for path in fresh:
                path.unlink()
            return
        folder = kept_dir(self.spool, unit[0])
        folder.mkdir(parents=True, exist_ok=True)
        for path in fresh:
            os.replace(path, folder / path.name)
        now = time.time()
        for path in folder.glob("*.dcm"):
            os.utime(path, (now, now))

    def requeue_failed(self) -> int:
        """Move the images kept in ``<spool>/failed`` back into the spool (``--retry-failed``); returns how many."""
        failed_dir = self.spool / "failed"
        paths = sorted(failed_dir.glob("*.dcm")) if failed_dir.is_dir() else []
        for path in paths:
            os.replace(path, self.spool / path.name)
        logger.info("%d failed image(s) moved back into %s for a retry", len(paths), self.spool)
        return len(paths)

    def _fail(self, paths: list[Path], reason: str, datasets: list[Dataset | None]) -> None:
        """Record a refusal and move the files to ``<spool>/failed`` (kept for inspection)."""
        failed_dir = self.spool / "failed"
        failed_dir.mkdir(exist_ok=True)
        for path, ds in zip(paths, datasets):
            ds = ds if ds is not None else Dataset()
            self.state.mark_failed(str(ds.get("SOPInstanceUID", path.stem)), str(ds.get("StudyInstanceUID", "")),
                                   str(ds.get("SeriesInstanceUID", "")), reason)
            os.replace(path, failed_dir / path.name)
        logger.warning("refused %s: %s", [p.name for p in paths], reason)

    def _process(self, unit: list[Dataset], paths: list[Path], kept: Collection[str] = ()) -> int:
        """Segment one unit (``kept``: UIDs of slices kept from the series' earlier SEG, read again here with their
        pixels), send the SEG, record it; returns the number of new instances finished. A failure concerns the
        new instances only: kept slices stay done with their earlier SEG."""
        first = unit[0]
        study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        key = tuple(str(ds.SOPInstanceUID) for ds in unit)
        is_kept = [uid in kept for uid in key]
        fresh = [(path, ds) for path, ds, old in zip(paths, unit, is_kept) if not old]
        earlier = self._earlier_seg(unit)
        try:
            result = self._unsent.pop(key, None)
            if result is None:
                datasets = [read_dataset(path) if old else ds for path, ds, old in zip(paths, unit, is_kept)]
                result = self.segmenter.segment(datasets, f"{self.ae_title} series {series}",
                                                self._seg_instance_number(unit, earlier))
        except UnsupportedDicomError as exc:
            self._fail([p for p, _ in fresh], exc.reason, [ds for _, ds in fresh])
            return 0
        except Exception as exc:  # one bad unit must not stop the listener; it is kept and recorded
            logger.exception("failed %s", [p.name for p in paths])
            self._fail([p for p, _ in fresh], failure_reason(exc), [ds for _, ds in fresh])
            return 0
        try:
            self.send(result.extras() + [result.seg])
        except (ConnectionError, OSError, RuntimeError) as exc:  # destination down: keep the spool, retry later
            self._send_failures += 1
            delay = backoff_delay(self._send_failures, self.poll_interval, self.limits.max_backoff_s)
            self._send_retry_at = time.monotonic() + delay
            logger.warning("cannot send SEG %s to %s (failure %d in a row: %s); next try in %.0f s",
                           result.seg.SOPInstanceUID, self.destination, self._send_failures, exc, delay)
            self._unsent[key] = result
            return 0
        if self._send_failures:
            logger.info("%s reachable again after %d failed send(s)", self.destination, self._send_failures)
            self._send_failures = 0
        seg_uid = str(result.seg.SOPInstanceUID)
        series_seg = len(unit) > 1 or is_volumetric(first)
        self.state.mark_done_many(result.source_uids, study, series, seg_uid,
                                  seg_instance_number=int(result.seg.InstanceNumber) if series_seg else None)
        self._sent_in_poll.add(seg_uid)
        self._keep(unit, [p for p, _ in fresh])
        if any(is_kept):
            logger.warning("series %s: %d late instance(s) after SEG %s of %d; sent SEG %s of the whole series (%d "
                           "instances, Instance Number %s), which supersedes it (same SEG series; the earlier SEG "
                           "stays in the archive)", series, len(fresh), ", ".join(sorted(earlier)) or "?",
                           sum(is_kept), seg_uid, len(unit), result.seg.InstanceNumber)
        elif earlier:  # also a second geometry group of the series (e.g. a localizer) segmented in a later poll
            logger.warning("series %s: %d late instance(s) after SEG %s; the series' earlier slices are no longer "
                           "kept (--keep-series %.0f s): sent SEG %s of the late instance(s) only", series,
                           len(fresh), ", ".join(sorted(earlier)), self.limits.keep_series_s, seg_uid)
        logger.info("sent SEG %s of %d instance(s) to %s", seg_uid, len(unit), self.destination)
        return len(fresh)

    def _seg_instance_number(self, unit: list[Dataset], earlier: Collection[str]) -> int | None:
        """Instance Number of the SEG of a volumetric unit when its series already has SEGs: one more than the
        highest recorded for the series (at least 2: a SEG sent before these numbers were recorded had 1), so a
        superseding whole-series SEG (or a late-only one) sorts after the SEGs it follows; the number recorded for
        this very SEG when it is made again (e.g. after a restart). None (the default numbering) for the first SEG
        of a series and for independent images."""
        if not (len(unit) > 1 or is_volumetric(unit[0])):
            return None
        numbers = self.state.seg_instance_numbers(str(unit[0].SeriesInstanceUID))
        seg_uid = self.segmenter.seg_uid([str(ds.SOPInstanceUID) for ds in unit])
        if seg_uid in numbers:
            return numbers[seg_uid]
        if not numbers and not earlier:
            return None
        return max([*numbers.values(), 1]) + 1

    def _earlier_seg(self, unit: list[Dataset]) -> set[str]:
        """UIDs of the SEGs already sent for slices of this volumetric unit's series in an earlier poll (empty for a
        series seen the first time, and for independent images)."""
        if not (len(unit) > 1 or is_volumetric(unit[0])):
            return set()
        records = self.state.series_records(str(unit[0].SeriesInstanceUID), DONE)
        return {r.seg_sop_instance_uid for r in records if r.seg_sop_instance_uid} - self._sent_in_poll

    def serve(self) -> None:
        """Run the SCP and empty the spool every :attr:`poll_interval` seconds until :attr:`stop_event` is set."""
        self.start()
        try:
            while not self.stop_event.is_set():
                self.poll_once()
                self.stop_event.wait(self.poll_interval)
        finally:
            self.shutdown()
