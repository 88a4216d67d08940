"""The DIMSE spool as the driver's source: what happens to a unit's files once its SEG is recorded."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from vmunetv2_monai.dicom.spool import SpoolSource


def _unit() -> list[Dataset]:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return [ds]


def test_stored_without_a_result_releases_the_files(tmp_path: Path) -> None:
    """The driver passes no result when the destination already held the SEG: the spool files still go, and
    nothing reads the missing SEG."""
    source = SpoolSource(tmp_path, state=None, segmenter=None, name="TEST", settle_s=0.0, keep_series_s=0.0, now=0.0)
    items = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for path in items:
        path.write_bytes(b"x")
    source.stored(_unit(), items, None)
    assert not any(path.exists() for path in items)
