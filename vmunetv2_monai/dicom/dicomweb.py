"""PACS access over DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) with dicomweb-client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8042/dicom-web"

_TAGS = {
    "study": "0020000D",
    "series": "0020000E",
    "sop": "00080018",
    "sop_class": "00080016",
    "manufacturer": "00080070",
    "modality": "00080060",
}


@dataclass(frozen=True)
class InstanceRef:
    """What QIDO tells us about one instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    manufacturer: str = ""
    modality: str = ""


def _first(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class PacsClient:
    """A DICOMweb server (e.g. Orthanc's DICOMweb plugin at ``http://host:8042/dicom-web``)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, timeout=timeout_s)

    def iter_instances(self, page_size: int = 200) -> Iterator[InstanceRef]:
        """All instances on the server (QIDO-RS ``/instances``, paged with limit/offset)."""
        offset = 0
        fields = [_TAGS["sop_class"], _TAGS["manufacturer"], _TAGS["modality"]]
        while True:
            page = self._client.search_for_instances(fields=fields, limit=page_size, offset=offset)
            for item in page:
                yield InstanceRef(
                    study_instance_uid=_first(item, _TAGS["study"]),
                    series_instance_uid=_first(item, _TAGS["series"]),
                    sop_instance_uid=_first(item, _TAGS["sop"]),
                    sop_class_uid=_first(item, _TAGS["sop_class"]),
                    manufacturer=_first(item, _TAGS["manufacturer"]),
                    modality=_first(item, _TAGS["modality"]),
                )
            if len(page) < page_size:
                return
            offset += len(page)

    def list_instances(self, page_size: int = 200) -> list[InstanceRef]:
        """Snapshot of all instances (the listing is complete before anything is stored)."""
        return list(self.iter_instances(page_size))

    def has_instance(self, study_instance_uid: str, sop_instance_uid: str) -> bool:
        """Whether the server holds ``sop_instance_uid`` in that study (QIDO-RS)."""
        found = self._client.search_for_instances(
            study_instance_uid=study_instance_uid, search_filters={"SOPInstanceUID": sop_instance_uid}
        )
        return any(_first(item, _TAGS["sop"]) == sop_instance_uid for item in found)

    def retrieve(self, ref: InstanceRef) -> Dataset:
        """WADO-RS retrieve of one instance (as stored on the server)."""
        return self._client.retrieve_instance(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)

    def store(self, ds: Dataset) -> None:
        """STOW-RS one instance; raises if the server lists it as failed or does not acknowledge it."""
        response = self._client.store_instances([ds])
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise RuntimeError(f"STOW-RS refused {ds.SOPInstanceUID}: failure reason(s) {reasons}")
        refs = response.get("ReferencedSOPSequence", []) if response is not None else []
        if not any(str(item.get("ReferencedSOPInstanceUID", "")) == str(ds.SOPInstanceUID) for item in refs):
            raise RuntimeError(f"STOW-RS did not acknowledge {ds.SOPInstanceUID}")
        logger.info("stored %s (%s)", ds.SOPInstanceUID, ds.SOPClassUID.name)

