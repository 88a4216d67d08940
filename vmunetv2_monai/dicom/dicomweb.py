"""PACS access over DICOMweb (QIDO-RS search, WADO-RS metadata and retrieve, STOW-RS store) with dicomweb-client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from .reader import UnsupportedDicomError, decode_problem

__all__ = ["AS_STORED", "DEFAULT_URL", "TRANSCODE_TO", "InstanceRef", "PacsClient", "PacsUnavailable", "is_transient"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8042/dicom-web"

_TAGS = {
    "study": "0020000D",
    "series": "0020000E",
    "sop": "00080018",
    "sop_class": "00080016",
    "manufacturer": "00080070",
    "modality": "00080060",
    "n_instances": "00201208",
}

#: Retrieval asks first for the instance as stored, so that it is decoded here by pydicom as a file or a DIMSE image is.
AS_STORED = (("application/dicom", "*"),)
#: Asked for when pydicom cannot decode the stored transfer syntax here: the server transcodes (Orthanc does).
TRANSCODE_TO = (("application/dicom", str(ExplicitVRLittleEndian)),)


class PacsUnavailable(RuntimeError):
    """The PACS cannot be reached or answers with a server error: retry the whole pass later."""


def is_transient(exc: BaseException) -> bool:
    """Connection failures, timeouts and HTTP 5xx: the PACS, not the image, is the problem.

    Args:
        exc: the exception raised while talking to the PACS.

    Returns:
        whether it is a connection failure, a timeout, :class:`PacsUnavailable` or an HTTP 5xx error.
    """
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, PacsUnavailable)):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and response is not None and response.status_code >= 500


@dataclass(frozen=True)
class InstanceRef:
    """What QIDO tells us about one instance.

    Attributes:
        study_instance_uid: StudyInstanceUID.
        series_instance_uid: SeriesInstanceUID.
        sop_instance_uid: SOPInstanceUID.
        sop_class_uid: SOPClassUID ("" when the server does not return it).
        manufacturer: Manufacturer ("" when absent).
        modality: Modality ("" when absent).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    manufacturer: str = ""
    modality: str = ""


def _first(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _ref(item: dict) -> InstanceRef:
    return InstanceRef(
        study_instance_uid=_first(item, _TAGS["study"]),
        series_instance_uid=_first(item, _TAGS["series"]),
        sop_instance_uid=_first(item, _TAGS["sop"]),
        sop_class_uid=_first(item, _TAGS["sop_class"]),
        manufacturer=_first(item, _TAGS["manufacturer"]),
        modality=_first(item, _TAGS["modality"]),
    )


class PacsClient:
    """A DICOMweb server (e.g. Orthanc's DICOMweb plugin at ``http://host:8042/dicom-web``).

    Failed requests are not retried by dicomweb-client: the caller's back-off decides when to try again.

    Args:
        url: DICOMweb base URL (a trailing ``/`` is dropped).
        timeout_s: timeout of each HTTP request in seconds.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, timeout=timeout_s)
        # dicomweb-client retries every failed request 5 times (30 s when the PACS is down); an unreachable PACS
        # ends the pass at once instead, and the watcher's own back-off decides when to try again
        self._client.set_http_retry_params(retry=False)

    def iter_studies(self, filters: dict[str, str] | None = None, page_size: int = 200) -> Iterator[tuple[str, int]]:
        """``(StudyInstanceUID, NumberOfStudyRelatedInstances)`` of every study matching ``filters`` (QIDO-RS
        ``/studies``, paged), e.g. ``{"StudyDate": "20240101-", "ModalitiesInStudy": "CT"}``.

        Args:
            filters: QIDO-RS search filters (attribute keyword -> value); ``None``: every study.
            page_size: studies asked for per request.

        Yields:
            ``(StudyInstanceUID, NumberOfStudyRelatedInstances)`` (0 when the server does not say).
        """
        offset = 0
        while True:
            page = self._client.search_for_studies(fields=[_TAGS["n_instances"]], search_filters=dict(filters or {}),
                                                   limit=page_size, offset=offset)
            for item in page:
                yield _first(item, _TAGS["study"]), int(_first(item, _TAGS["n_instances"]) or 0)
            if len(page) < page_size:
                return
            offset += len(page)

    def study_instances(self, study_instance_uid: str, page_size: int = 1000) -> list[InstanceRef]:
        """Every instance of one study (QIDO-RS ``/studies/{uid}/instances``, paged).

        Args:
            study_instance_uid: the study.
            page_size: instances asked for per request.

        Returns:
            one reference per instance.
        """
        fields = [_TAGS["sop_class"], _TAGS["manufacturer"], _TAGS["modality"]]
        refs: list[InstanceRef] = []
        while True:
            page = self._client.search_for_instances(study_instance_uid=study_instance_uid, fields=fields,
                                                     limit=page_size, offset=len(refs))
            refs += [_ref(item) for item in page]
            if len(page) < page_size:
                return refs

    def iter_instances(self, page_size: int = 200) -> Iterator[InstanceRef]:
        """All instances on the server (QIDO-RS ``/instances``, paged with limit/offset).

        Args:
            page_size: instances asked for per request.

        Yields:
            one reference per instance.
        """
        offset = 0
        fields = [_TAGS["sop_class"], _TAGS["manufacturer"], _TAGS["modality"]]
        while True:
            page = self._client.search_for_instances(fields=fields, limit=page_size, offset=offset)
            yield from (_ref(item) for item in page)
            if len(page) < page_size:
                return
            offset += len(page)

    def list_instances(self, page_size: int = 200) -> list[InstanceRef]:
        """Snapshot of all instances (the listing is complete before anything is stored).

        Args:
            page_size: instances asked for per request.

        Returns:
            one reference per instance (see :meth:`iter_instances`).
        """
        return list(self.iter_instances(page_size))

    def series_metadata(
        self, study_instance_uid: str, series_instance_uid: str
    ) -> tuple[dict[str, Dataset], dict[str, str]]:
        """SOPInstanceUID -> header of every instance of a series (WADO-RS metadata: no pixel data is sent), and
        SOPInstanceUID -> reason for each instance whose header pydicom cannot parse (e.g. a DS value "abc").

        Args:
            study_instance_uid: the study.
            series_instance_uid: the series.

        Returns:
            ``(headers, unreadable)``: SOPInstanceUID -> header without pixel data, and SOPInstanceUID -> reason for
            each unparsable header (logged as a WARNING).
        """
        items = self._client.retrieve_series_metadata(study_instance_uid, series_instance_uid)
        headers, unreadable = {}, {}
        for item in items:
            try:
                ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
            except (ValueError, TypeError, KeyError) as exc:
                sop = _first(item, _TAGS["sop"])
                unreadable[sop] = f"series metadata cannot be parsed ({type(exc).__name__}: {exc})"
                logger.warning("series %s instance %s: %s", series_instance_uid, sop, unreadable[sop])
                continue
            headers[str(ds.SOPInstanceUID)] = ds
        return headers, unreadable

    def has_instance(self, study_instance_uid: str, sop_instance_uid: str) -> bool:
        """Whether the server holds ``sop_instance_uid`` in that study (QIDO-RS).

        Args:
            study_instance_uid: the study searched.
            sop_instance_uid: the instance looked for.

        Returns:
            whether the search returns that instance.
        """
        found = self._client.search_for_instances(
            study_instance_uid=study_instance_uid, search_filters={"SOPInstanceUID": sop_instance_uid}
        )
        return any(_first(item, _TAGS["sop"]) == sop_instance_uid for item in found)

    def retrieve(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Dataset:
        """WADO-RS retrieve of one instance as stored (``transfer-syntax=*``; a server that does not know it, HTTP
        400 / 406, is asked without a transfer syntax), so that compressed images are decoded here with pydicom
        exactly as with ``--files`` and ``--listen``. One that pydicom cannot decode here (see
        :func:`~.reader.decode_problem`) is asked for again transcoded to explicit VR little endian; if the server
        cannot do that either, :class:`~.reader.UnsupportedDicomError` names both reasons.

        Args:
            study_instance_uid: the study.
            series_instance_uid: the series.
            sop_instance_uid: the instance.

        Returns:
            the instance, decodable by pydicom here.

        Raises:
            requests.HTTPError: the retrieve failed other than with HTTP 400 / 406 (or without a response).
            UnsupportedDicomError: pydicom cannot decode it here and the server did not transcode it.
        """
        uids = (study_instance_uid, series_instance_uid, sop_instance_uid)
        try:
            ds = self._client.retrieve_instance(*uids, media_types=AS_STORED)
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code not in (400, 406):
                raise
            logger.info("server does not take transfer-syntax=* for %s (HTTP %d); retrieving it without one",
                        sop_instance_uid, exc.response.status_code)
            ds = self._client.retrieve_instance(*uids)
        problem = decode_problem(ds)
        if problem is None:
            return ds
        stored = UID(str(ds.file_meta.TransferSyntaxUID))
        logger.info("%s: %s; asking the server for it in explicit VR little endian", sop_instance_uid, problem)
        try:
            transcoded = self._client.retrieve_instance(*uids, media_types=TRANSCODE_TO)
        except requests.HTTPError as exc:
            if exc.response is None:
                raise
            # the stored copy was just served, so an error here is about transcoding this object, not an outage
            raise UnsupportedDicomError(f"{problem}; the server did not transcode it from {stored.name} either "
                                        f"(HTTP {exc.response.status_code})", self.url,
                                        sop_instance_uid) from exc
        logger.info("%s: decoded from the server's transcoding of %s to %s", sop_instance_uid, stored.name,
                    UID(str(transcoded.file_meta.TransferSyntaxUID)).name)
        return transcoded

    def store(self, ds: Dataset) -> None:
        """STOW-RS one instance; raises if the server lists it as failed or does not acknowledge it.

        Args:
            ds: the instance to store.

        Raises:
            RuntimeError: the server lists it as failed (with the failure reasons) or does not acknowledge it.
        """
        response = self._client.store_instances([ds])
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise RuntimeError(f"STOW-RS refused {ds.SOPInstanceUID}: failure reason(s) {reasons}")
        refs = response.get("ReferencedSOPSequence", []) if response is not None else []
        if not any(str(item.get("ReferencedSOPInstanceUID", "")) == str(ds.SOPInstanceUID) for item in refs):
            raise RuntimeError(f"STOW-RS did not acknowledge {ds.SOPInstanceUID}")
        logger.info("stored %s (%s)", ds.SOPInstanceUID, ds.SOPClassUID.name)

