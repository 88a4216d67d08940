"""DIMSE listener: a Storage SCP (pynetdicom) that receives images by C-STORE into a spool, segments them through
the shared :class:`~.driver.Driver` with the same units and state file as the DICOMweb pipeline, and C-STOREs each
SEG (and SR, overlays) to a destination AE.

Nothing lost: an image is acknowledged only once it is on disk in the spool directory (atomic write, named by
its validated SOPInstanceUID), and it leaves the spool only after its SEG was accepted by the destination and
recorded as done. Never twice: the state file says what is done, and a SEG's UID is derived from its sources,
so a SEG re-sent after a kill between the store and the state update is the same object (a PACS keeps one).

What an administrator sets (:class:`ListenerLimits`): the calling AE titles allowed (others, and a called AE title
other than ours, are rejected at association); the largest object accepted (a bigger one is aborted while it
arrives: datasets are streamed to a file, never held whole in memory); a spool size above which new associations
are rejected (transient, "temporary congestion"). C-ECHO (Verification) is answered. A destination that is down
is retried with a bounded exponential back-off. Late slices of a series: :mod:`~.spool`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification

from ..files import copy_atomic, remove_stale_temps_in
from .dimse import MB, ListenerLimits, RemoteAE, c_store
from .driver import Driver
from .spool import SpoolSource, expire_kept, spool_path
from .state import StateDB
from .transport import RunSummary, Sink, backoff_delay
from .units import Segmenter, UnitResult

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: A-ASSOCIATE-RJ (result, source, diagnostic): transient, service provider (presentation), temporary congestion.
REJECT_CONGESTION = (0x02, 0x03, 0x01)


@dataclass
class _Transfer:
    """Bytes of the dataset now arriving on one association."""

    received: int = 0
    aborted: bool = False


class Listener(Sink):
    """Storage SCP on ``host:port`` (127.0.0.1 by default) + a worker that empties the spool every
    ``poll_interval`` seconds; it is also the driver's sink (C-STORE to ``destination``, with back-off).

    Args:
        segmenter: the model and SEG rules.
        state: the state file.
        spool: where received images wait.
        destination: the AE that receives the results.
        ae_title: our AE title.
        host: address of the SCP.
        port: port of the SCP.
        settle_s: a series is segmented once its newest image is this old.
        limits: what the SCP accepts, back-off and retention.
        poll_interval: seconds between spool polls.
    """

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
        self.driver = Driver(segmenter, self, state, self.stop_event)
        self._server = None
        #: SEGs whose C-STORE failed, by their source UIDs: re-sent on the next poll without segmenting again.
        self._unsent: dict[tuple[str, ...], UnitResult] = {}
        #: datasets arriving, by association (each association runs in its own thread)
        self._transfers: dict[int, _Transfer] = {}
        #: consecutive failed sends to the destination, and when (time.monotonic) the next one may be tried
        self._send_failures, self._send_retry_at = 0, 0.0

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
        """C-STORE ``datasets`` to the destination on one association (:func:`~.dimse.c_store`).

        Args:
            datasets: the objects, sent in this order.

        Raises:
            ConnectionError: the association or a C-STORE failed (see :func:`~.dimse.c_store`).
        """
        c_store(self.ae_title, self.destination, datasets)

    def available(self) -> bool:
        """False while a destination that was down waits for its back-off."""
        return time.monotonic() >= self._send_retry_at

    def unsent(self, source_uids: Sequence[str]) -> UnitResult | None:
        """The result made for exactly these sources whose C-STORE failed; results of units that changed since
        (sharing a source) are dropped: they are made again.

        Args:
            source_uids: the unit's SOPInstanceUIDs.

        Returns:
            The result kept after a failed C-STORE (it is no longer kept), else None.
        """
        key = tuple(source_uids)
        result = self._unsent.pop(key, None)
        self._unsent = {k: v for k, v in self._unsent.items() if not set(k) & set(key)}
        return result

    def store(self, result: UnitResult) -> bool:
        """C-STORE the SR and overlays, then the SEG; a destination that is down is retried after a back-off and the
        result kept (False).

        Args:
            result: the unit's objects.

        Returns:
            True when sent; False when the destination failed (the result is kept for :meth:`unsent`).
        """
        try:
            self.send(result.extras() + [result.seg])
        except (ConnectionError, OSError, RuntimeError) as exc:  # destination down: keep the spool, retry later
            self._send_failures += 1
            delay = backoff_delay(self._send_failures, self.poll_interval, self.limits.max_backoff_s)
            self._send_retry_at = time.monotonic() + delay
            logger.warning("cannot send SEG %s to %s (failure %d in a row: %s); next try in %.0f s",
                           result.seg.SOPInstanceUID, self.destination, self._send_failures, exc, delay)
            self._unsent[tuple(result.source_uids)] = result
            return False
        if self._send_failures:
            logger.info("%s reachable again after %d failed send(s)", self.destination, self._send_failures)
            self._send_failures = 0
        logger.info("sent SEG %s of %d instance(s) to %s", result.seg.SOPInstanceUID, len(result.source_uids),
                    self.destination)
        return True

    def poll_once(self) -> int:
        """Segment every settled unit in the spool.

        An image that cannot be processed is recorded as failed with its reason and moved to ``<spool>/failed``
        (:meth:`requeue_failed` brings it back); the others go on.

        Returns:
            The number of new source instances finished.
        """
        now = time.time()
        expire_kept(self.spool, self.limits.keep_series_s, now)
        source = SpoolSource(self.spool, self.state, self.segmenter, self.ae_title, self.settle_s,
                             self.limits.keep_series_s, now)
        summary = RunSummary()
        paths = sorted(self.spool.glob("[!.]*.dcm"))  # not the temporary file of a copy_atomic
        self.driver.process(source, paths, summary, retry_failed=True)  # a failed image here was requeued
        return len(summary.stored)

    def requeue_failed(self) -> int:
        """Move the images kept in ``<spool>/failed`` back into the spool (``--retry-failed``); returns how many."""
        failed_dir = self.spool / "failed"
        paths = sorted(failed_dir.glob("*.dcm")) if failed_dir.is_dir() else []
        for path in paths:
            os.replace(path, self.spool / path.name)
        logger.info("%d failed image(s) moved back into %s for a retry", len(paths), self.spool)
        return len(paths)

    def serve(self) -> None:
        """Run the SCP and empty the spool every :attr:`poll_interval` seconds until :attr:`stop_event` is set."""
        self.start()
        try:
            while not self.stop_event.is_set():
                self.poll_once()
                self.stop_event.wait(self.poll_interval)
        finally:
            self.shutdown()
