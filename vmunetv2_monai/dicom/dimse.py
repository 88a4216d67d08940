"""DIMSE settings and sending: the destination AE (:class:`RemoteAE`), what the listener's Storage SCP accepts
(:class:`ListenerLimits`) and the C-STORE of results to the destination (:func:`c_store`, pynetdicom)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

__all__ = ["MB", "ListenerLimits", "RemoteAE", "c_store"]

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class ListenerLimits:
    """What the listener accepts and how long it waits.

    Args:
        calling_aets: calling AE titles allowed to associate (empty: any; the called AE title must always be ours).
        max_object_bytes: largest object accepted (a larger C-STORE is aborted while it arrives).
        spool_max_bytes: new associations are rejected while the spool (kept slices included) holds more.
        max_backoff_s: longest wait before retrying a destination that is down
            (:func:`~.transport.backoff_delay`).
        keep_series_s: how long the slices of a series whose SEG was sent are kept to redo it with late slices (0:
            none kept).

    Raises:
        ValueError: an AE title that is not 1 to 16 characters without a backslash, or a limit out of range.
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


@dataclass(frozen=True)
class RemoteAE:
    """A DICOM application entity to send to: ``AET@host:port``.

    Attributes:
        ae_title: the called AE title.
        host: host name or IP address.
        port: TCP port.
    """

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RemoteAE:
        """``"ORTHANC@127.0.0.1:4242"`` -> RemoteAE.

        Args:
            text: ``AET@host:port``, the AE title 1 to 16 characters and the port 1 to 5 digits.

        Returns:
            the parsed application entity.

        Raises:
            ValueError: ``text`` is not of the form ``AET@host:port``.
        """
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):([0-9]{1,5})", text)
        if match is None:
            raise ValueError(f"destination {text!r}: expected AET@host:port")
        return cls(match.group(1), match.group(2), int(match.group(3)))


def c_store(ae_title: str, destination: RemoteAE, datasets: Sequence[Dataset]) -> None:
    """C-STORE ``datasets`` to ``destination`` on one association.

    A destination that does not accept Comprehensive 3D SR Storage still gets the other datasets (the SR is left out
    with a WARNING); any other class it does not accept, a refused association or a failed C-STORE raises.

    Args:
        ae_title: our (calling) AE title.
        destination: the AE that receives them.
        datasets: the objects, sent in this order (the listener sends overlays and SR before the SEG).

    Raises:
        ConnectionError: naming the destination and what failed.
    """
    ae = AE(ae_title=ae_title)
    for sop_class in (SegmentationStorage, SecondaryCaptureImageStorage, Comprehensive3DSRStorage):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"association with {destination} not established")
    try:
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        for ds in datasets:
            if str(ds.SOPClassUID) not in accepted:
                if str(ds.SOPClassUID) == str(Comprehensive3DSRStorage):  # an extra: the SEG still goes
                    logger.warning("%s does not accept Comprehensive 3D SR Storage: SR %s not sent (--no-sr "
                                   "stops making them)", destination, ds.SOPInstanceUID)
                    continue
                raise ConnectionError(f"{destination} does not accept {ds.SOPClassUID.name} ({ds.SOPInstanceUID})")
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code is None or (code != 0 and not 0xB000 <= code <= 0xBFFF):
                raise ConnectionError(f"C-STORE of {ds.SOPInstanceUID} to {destination}: status {code}")
    finally:
        assoc.release()
