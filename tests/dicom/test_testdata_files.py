"""pydicom's and pydicom-data's test files that ended with an unnamed error in ``--files`` (issue 25, points 1 and
2): each now gets a SEG (valid: dciodvfy, highdicom read-back, dcmjs) or a named refusal, and the others go on."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.dicom.cli import main
from vmunetv2_monai.dicom.local import segment_files
from vmunetv2_monai.dicom.units import Segmenter

from .conftest import assert_valid_dicom


def _testdata(name: str) -> Path:
    """A pydicom / pydicom-data test file (pydicom-data is a test requirement: missing means fail)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"{name} not found: pip install pydicom-data")
    return Path(path)


#: Secondary captures without Modality (type 1): segmented as OT (the SEG's Content Label says OT_SEG).
NO_MODALITY = ("GDCMJ2K_TextGBR.dcm", "SC_jpeg_no_color_transform.dcm", "SC_jpeg_no_color_transform_2.dcm",
               "SC_rgb_jpeg_app14_dcmd.dcm")

RT_DOSE = ("SOP class RT Dose Storage has a multi-frame IOD, and this image has no Shared Functional Groups "
           "Sequence (a classic multi-frame object, here of one frame): highdicom takes the SEG's pixel measures "
           "from those functional groups only")
NO_FRAME_OF_REFERENCE = ("missing FrameOfReferenceUID, which the IOD of its SOP class (CT Image Storage) requires "
                         "(type 1 in its mandatory Frame of Reference module); a SEG of it would need it")
#: file -> the refusal recorded for it (exactly)
REFUSED = {
    "rtdose_1frame.dcm": RT_DOSE, "rtdose_expb_1frame.dcm": RT_DOSE, "rtdose_rle_1frame.dcm": RT_DOSE,
    "693_UNCR.dcm": NO_FRAME_OF_REFERENCE, "693_UNCI.dcm": NO_FRAME_OF_REFERENCE,
    "693_J2KR.dcm": NO_FRAME_OF_REFERENCE, "693_J2KI.dcm": NO_FRAME_OF_REFERENCE,
    "badVR.dcm": "NumberOfFrames '1A' is not a number",
}
#: one MR slice stored three times with new SOP instance UIDs (same series, frame of reference and position)
SAME_POSITION = ("MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm")


def _by_modality(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        out.setdefault(str(ds.Modality), []).append(ds)
    return out


@pytest.mark.parametrize("name", NO_MODALITY)
def test_source_without_modality_gets_a_seg(name: str, tmp_path: Path, predictor: Predictor) -> None:
    """These gave ``AttributeError: no attribute 'Modality'`` (highdicom reads it for the Content Label). Now SEG,
    SR and overlay, all valid, the SEG referencing the source; the source is not modified."""
    path = _testdata(name)
    source = pydicom.dcmread(path)
    assert "Modality" not in source
    out = tmp_path / "out"
    summary = segment_files([path], out, Segmenter(predictor, overlay=True))
    assert summary.stored == [str(path)] and not summary.failed
    written = sorted(out.iterdir())
    assert_valid_dicom(written)
    objects = _by_modality(out)
    assert sorted(objects) == ["OT", "SEG", "SR"] and all(len(v) == 1 for v in objects.values())
    (seg,) = objects["SEG"]
    assert seg.ContentLabel == "OT_SEG"
    ((_, _, ref),) = hd.seg.Segmentation.from_dataset(seg).get_source_image_uids()
    assert str(ref) == str(source.SOPInstanceUID)
    assert "Modality" not in source


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_invalid_source_is_refused_by_name(name: str, tmp_path: Path, predictor: Predictor) -> None:
    """These ended with an unnamed AttributeError / ValueError (highdicom's or int()'s). Now a refusal recorded
    against the file with what is wrong; nothing is written."""
    path = _testdata(name)
    out = tmp_path / "out"
    summary = segment_files([path], out, Segmenter(predictor, overlay=True))
    assert summary.failed == {str(path): REFUSED[name]} and not summary.stored
    assert not out.exists() or not any(out.iterdir())


def test_slices_at_one_position_are_refused_by_name(tmp_path: Path, predictor: Predictor) -> None:
    """Three copies of one MR slice (new UIDs, one series and position) gave highdicom's "Plane positions must not
    contain duplicates". Now each is refused with a reason naming all three files and the position, and a file
    given with them (CT_small.dcm) still gets its SEG."""
    paths = [_testdata(name) for name in SAME_POSITION]
    other = _testdata("CT_small.dcm")
    out = tmp_path / "out"
    summary = segment_files([*paths, other], out, Segmenter(predictor))
    assert summary.stored == [str(other)]
    assert sorted(summary.failed) == sorted(map(str, paths))
    (reason,) = set(summary.failed.values())
    assert reason.startswith("3 slices of series 1.3.6.1.4.1.5962.1.3.5.1.20040826185059.5457 share an Image Position"
                             " (Patient): ")
    assert all(name in reason for name in SAME_POSITION) and "at -180.058\\-97.1478\\112.828" in reason
    assert_valid_dicom(sorted(out.iterdir()))
    for path in paths:  # each alone is one slice: it gets its SEG
        single = segment_files([path], tmp_path / path.name, Segmenter(predictor))
        assert single.stored == [str(path)] and not single.failed


def test_cli_runs_every_case_together(tmp_path: Path, tiny_checkpoint: Path, network_json: str,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """``vmunetv2-dicom --files <all of them> --overlay``: exit status 1, each refusal logged with its file and
    reason, and every other file still gets its SEG, SR and overlay."""
    # one file per SOP instance UID (the others repeat these UIDs and are refused as duplicates, tested elsewhere)
    refused = [_testdata(name) for name in ("rtdose_1frame.dcm", "693_UNCR.dcm", "693_UNCI.dcm", "badVR.dcm",
                                            *SAME_POSITION)]
    good = [_testdata(name) for name in NO_MODALITY if name != "SC_rgb_jpeg_app14_dcmd.dcm"]
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        rc = main(["--files", *map(str, refused + good), "--output-dir", str(out), "--checkpoint",
                   str(tiny_checkpoint), "--network-json", network_json, "--overlay", "--log-level", "WARNING"])
    assert rc == 1
    objects = _by_modality(out)
    assert {k: len(v) for k, v in objects.items()} == {"OT": len(good), "SEG": len(good), "SR": len(good)}
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    for path in refused:  # a file alone by its path; the slices of one series by their file names in the reason
        named, reason = ((str(path), REFUSED[path.name]) if path.name in REFUSED
                         else (path.name, "share an Image Position (Patient)"))
        assert any(named in m and reason in m for m in messages), (path, messages)
    assert not any("Traceback" in m or "AttributeError" in m for m in messages)
