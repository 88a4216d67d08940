"""DIMSE listener: a Storage SCP (pynetdicom) that receives images by C-STORE, segments them with the same units
and state file as the DICOMweb pipeline, and C-STOREs each SEG (and overlays) to a destination AE.

Nothing lost: an image is acknowledged only once it is on disk in the spool directory (atomic write, named by
its validated SOPInstanceUID), and it leaves the spool only after its SEG was accepted by the destination and
recorded as done. Never twice: the state file says what is done, and a SEG's UID is derived from its sources,
so a SEG re-sent after a kill between the store and the state update is the same object (a PACS keeps one).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, SegmentationStorage

from .files import write_atomic
from .reader import UnsupportedDicomError, check_metadata, failure_reason, read_dataset
from .state import FAILED, StateDB
from .units import Segmenter, UnitResult, group_units, is_volumetric, skip_reason

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


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


def spool_path(spool: Path, ds: Dataset) -> Path:
    """Where a received instance is kept: ``<spool>/<SOPInstanceUID>.dcm``; the UID is never trusted as a path."""
    uid = str(ds.get("SOPInstanceUID", ""))
    if len(uid) > 64 or _UID.fullmatch(uid) is None:
        raise ValueError(f"not a valid SOPInstanceUID: {uid[:80]!r}")
    return spool / f"{uid}.dcm"


class Listener:
    """Storage SCP on ``host:port`` (127.0.0.1 by default) + a worker that empties the spool."""

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
    ) -> None:
        self.segmenter, self.state, self.destination = segmenter, state, destination
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.ae_title, self.host, self.port, self.settle_s = ae_title, host, port, settle_s
        self.stop_event = threading.Event()
        self._server = None
        #: SEGs whose C-STORE failed, by their source UIDs: re-sent on the next poll without segmenting again.
        self._unsent: dict[tuple[str, ...], UnitResult] = {}

    def _on_store(self, event: evt.Event) -> int:
        """C-STORE: keep the instance on disk before acknowledging it."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = spool_path(self.spool, ds)
        except ValueError as exc:
            logger.warning("C-STORE from %s refused: %s", event.assoc.requestor.ae_title, exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            write_atomic(ds, path)
        except OSError:
            logger.exception("C-STORE of %s: cannot write the spool file", path.name)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def start(self) -> None:
        """Start the Storage SCP in the background."""
        ae = AE(ae_title=self.ae_title)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        logger.info("Storage SCP %s listening on %s:%d; results go to %s", self.ae_title, self.host, self.port,
                    self.destination)

    def shutdown(self) -> None:
        """Stop the SCP."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def send(self, datasets: list[Dataset]) -> None:
        """C-STORE ``datasets`` to the destination on one association; raises unless every one succeeded."""
        ae = AE(ae_title=self.ae_title)
        for sop_class in (SegmentationStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class)
        dest = self.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"association with {dest} not established")
        try:
            for ds in datasets:
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
        candidates: dict[str, tuple[Path, Dataset]] = {}
        for path in sorted(self.spool.glob("*.dcm")):
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
        now = time.time()
        units = group_units(ds for _, ds in candidates.values())
        current = {tuple(str(ds.SOPInstanceUID) for ds in unit) for unit in units}
        self._unsent = {k: v for k, v in self._unsent.items() if k in current}  # a unit that changed is redone
        for unit in units:
            paths = [candidates[str(ds.SOPInstanceUID)][0] for ds in unit]
            newest = max(p.stat().st_mtime for p in paths)
            if (len(unit) > 1 or is_volumetric(unit[0])) and now - newest < self.settle_s:
                continue  # stable-series rule: no new slice for settle_s seconds (file times survive a restart)
            if self.stop_event.is_set():
                break
            finished += self._process(unit, paths)
        return finished

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

    def _process(self, unit: list[Dataset], paths: list[Path]) -> int:
        first = unit[0]
        study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        key = tuple(str(ds.SOPInstanceUID) for ds in unit)
        try:
            result = self._unsent.pop(key, None) or self.segmenter.segment(unit, f"{self.ae_title} series {series}")
        except UnsupportedDicomError as exc:
            self._fail(paths, exc.reason, list(unit))
            return 0
        except Exception as exc:  # one bad unit must not stop the listener; it is kept and recorded
            logger.exception("failed %s", [p.name for p in paths])
            self._fail(paths, failure_reason(exc), list(unit))
            return 0
        try:
            self.send(result.overlays + [result.seg])
        except (ConnectionError, OSError, RuntimeError) as exc:  # destination down: keep the spool, retry later
            logger.warning("cannot send SEG %s to %s (%s); retrying on the next poll", result.seg.SOPInstanceUID,
                           self.destination, exc)
            self._unsent[key] = result
            return 0
        self.state.mark_done_many(result.source_uids, study, series, str(result.seg.SOPInstanceUID))
        for path in paths:
            path.unlink()
        logger.info("sent SEG %s of %d instance(s) to %s", result.seg.SOPInstanceUID, len(unit), self.destination)
        return len(unit)

    def serve(self, interval: float = 2.0) -> None:
        """Run the SCP and empty the spool every ``interval`` seconds until :attr:`stop_event` is set."""
        self.start()
        try:
            while not self.stop_event.is_set():
                self.poll_once()
                self.stop_event.wait(interval)
        finally:
            self.shutdown()
