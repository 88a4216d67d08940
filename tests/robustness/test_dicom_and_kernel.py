"""Broken DICOM inputs are refused naming the file; no poison object stops the watcher, the listener or
``--files`` (issue 25, point 1); the CPU kernel's build folder is per checkout."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.dicom import cli as cli_module
from vmunetv2_monai.dicom.cli import _predictor, build_parser, main
from vmunetv2_monai.dicom.dicomweb import InstanceRef, PacsClient
from vmunetv2_monai.dicom.dimse import RemoteAE
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.listener import Listener
from vmunetv2_monai.dicom.local import dicom_files, segment_files
from vmunetv2_monai.dicom.pipeline import Pipeline
from vmunetv2_monai.dicom.reader import UnsupportedDicomError, load_image
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID
from vmunetv2_monai.dicom.spool import spool_path
from vmunetv2_monai.dicom.sr import SR_SOP_CLASS_UID
from vmunetv2_monai.dicom.state import DONE, FAILED, StateDB
from vmunetv2_monai.dicom.units import Segmenter
from vmunetv2_monai.ops.selective_scan.cpu import _build_dir

from ..dicom.conftest import REPO, assert_valid_dicom, ct_series, wrap_vl_endoscopic


def _good(tmp_path):
    ds = wrap_vl_endoscopic(np.full((12, 16, 3), 100, dtype=np.uint8))
    path = tmp_path / "good.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, path


@pytest.mark.parametrize("damage, reason", [
    ("text", "not a readable DICOM"), ("empty", "not a readable DICOM"), ("truncated_pixels", "truncated pixel data"),
    ("no_pixels", "pixel data"), ("multi_frame", "multi-frame"),
    ("three_sample_monochrome", "MONOCHROME2 with three samples per pixel"),  # was taken as RGB (issue 25, 13)
])
def test_broken_dicom_is_refused_naming_the_file(tmp_path, damage, reason):
    ds, path = _good(tmp_path)
    bad = tmp_path / f"{damage}.dcm"
    if damage == "text":
        bad.write_text("hello")
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        if damage == "truncated_pixels":
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        elif damage == "no_pixels":
            del ds.PixelData
        elif damage == "three_sample_monochrome":
            ds.PhotometricInterpretation = "MONOCHROME2"
        else:
            ds.NumberOfFrames = 2
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(UnsupportedDicomError, match=reason) as err:
        load_image(bad)
    assert bad.name in str(err.value)
    assert load_image(path).image.shape == (3, 12, 16)


def test_cpu_kernel_build_folder_differs_per_checkout(tmp_path):
    a, b = tmp_path / "a" / "scan_cpu.cpp", tmp_path / "b" / "scan_cpu.cpp"
    assert _build_dir("AVX2", a) != _build_dir("AVX2", b)
    assert _build_dir("AVX2", a) == _build_dir("AVX2", a)


class ThresholdPredictor:
    """Stands in for the model (these tests are about the drivers): foreground where the channel mean is > 100."""

    intensity_rule = "test: channel mean > 100"

    def predict(self, image: np.ndarray) -> np.ndarray:
        return image.mean(axis=0) > 100


def _still(study_uid: str | None = None) -> Dataset:
    return wrap_vl_endoscopic(np.full((12, 16, 3), 150, dtype=np.uint8), study_uid=study_uid)


def _text_pixel_spacing(study_uid: str | None = None) -> Dataset:
    """A still whose PixelSpacing is ``abc\\def`` (as ``dcmodify -m "(0028,0030)=abc\\def"`` writes it)."""
    ds = _still(study_uid)
    tag = Tag(0x00280030)
    ds[tag] = RawDataElement(tag, "DS", 8, b"abc\\def", 0, False, True)
    return ds


def _two_value_position(study_uid: str | None = None) -> Dataset:
    (ds,) = ct_series(1, study_uid)
    ds.ImagePositionPatient = [1.0, 2.0]
    return ds


#: poison image -> pattern of the reason recorded for it
POISONS = {_text_pixel_spacing: r"PixelSpacing 'abc\\def' is not 2 numbers",
           _two_value_position: r"ImagePositionPatient '1(\.0)?\\2(\.0)?' is not 3 numbers"}


def test_files_mode_reports_a_poison_file_and_segments_the_rest(tmp_path: Path) -> None:
    """A bad PixelSpacing or a 2-value ImagePositionPatient used to abort the whole --files batch."""
    good = write_atomic(_still(), tmp_path / "in" / "good.dcm")
    bad = {write_atomic(make(), tmp_path / "in" / f"{make.__name__}.dcm"): pattern for make, pattern in POISONS.items()}
    summary = segment_files([*bad, good], tmp_path / "out", Segmenter(ThresholdPredictor()))
    assert summary.stored == [str(good)]
    assert set(summary.failed) == {str(p) for p in bad}
    for path, pattern in bad.items():
        assert re.search(pattern, summary.failed[str(path)]), summary.failed[str(path)]
    assert len(list((tmp_path / "out").iterdir())) == 2  # the SEG and its SR


def test_listener_records_a_poison_image_and_goes_on(tmp_path: Path) -> None:
    """The listener used to die on such an image, and again on every restart (it stayed in the spool). Now it is
    recorded as failed and moved to <spool>/failed, the good image gets its SEG, a restart passes over it and
    --retry-failed (requeue_failed) tries it again."""
    sent: list[Dataset] = []

    def listener(state: StateDB) -> Listener:
        made = Listener(Segmenter(ThresholdPredictor()), state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", 1),
                        settle_s=0)
        made.send = sent.extend  # the destination: these tests are about the spool, not the network
        return made

    good = _still()
    bad = [(make(), pattern) for make, pattern in POISONS.items()]
    with StateDB(tmp_path / "state.sqlite") as state:
        first = listener(state)
        for ds in [*(ds for ds, _ in bad), good]:
            write_atomic(ds, spool_path(first.spool, ds))
        assert first.poll_once() == 1
        assert [str(ds.SOPClassUID) for ds in sent] == [SR_SOP_CLASS_UID, SEG_SOP_CLASS_UID]  # the SR first
        assert state.get(str(good.SOPInstanceUID)).status == DONE
        for ds, pattern in bad:
            record = state.get(str(ds.SOPInstanceUID))
            assert record.status == FAILED and re.search(pattern, record.reason), record
            assert (first.spool / "failed" / f"{ds.SOPInstanceUID}.dcm").is_file()
        restarted = listener(state)
        assert restarted.poll_once() == 0 and len(sent) == 2
        assert restarted.requeue_failed() == len(bad)
        assert restarted.poll_once() == 0 and len(sent) == 2
        assert all(state.get(str(ds.SOPInstanceUID)).attempts == 2 for ds, _ in bad)


BAD_STUDY = "1.2.3/../x"


class MemoryPacs(PacsClient):
    """A PACS in memory behind the real PacsClient code: QIDO listings from the datasets, WADO-RS metadata as
    DICOM JSON parsed by PacsClient.series_metadata. The study BAD_STUDY is listed through dicomweb-client, which
    refuses its UID (ValueError) before any request is made."""

    def __init__(self, studies: dict[str, list[Dataset]], metadata_json: dict[str, dict] | None = None) -> None:
        super().__init__("http://127.0.0.1:9/dicom-web")
        self.studies, self.stored, self.listed = studies, [], []
        self.metadata_json = metadata_json or {}  # SOPInstanceUID -> JSON that replaces the dataset's
        self._client.retrieve_series_metadata = self._series_json

    def _series_json(self, study: str, series: str) -> list[dict]:
        return [self.metadata_json.get(str(ds.SOPInstanceUID)) or ds.to_json_dict()
                for ds in self.studies[study] if str(ds.SeriesInstanceUID) == series]

    def iter_studies(self, filters: dict[str, str] | None = None, page_size: int = 200):
        return iter([(uid, len(datasets)) for uid, datasets in self.studies.items()])

    def study_instances(self, study_instance_uid: str, page_size: int = 1000) -> list[InstanceRef]:
        self.listed.append(study_instance_uid)
        if study_instance_uid == BAD_STUDY:
            return super().study_instances(study_instance_uid, page_size)
        return [InstanceRef(study_instance_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                            str(ds.SOPClassUID)) for ds in self.studies[study_instance_uid]]

    def has_instance(self, study_instance_uid: str, sop_instance_uid: str) -> bool:
        return any(str(ds.SOPInstanceUID) == sop_instance_uid for ds in self.stored)

    def retrieve(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Dataset:
        return next(ds for ds in self.studies[study_instance_uid] if str(ds.SOPInstanceUID) == sop_instance_uid)

    def store(self, ds: Dataset) -> None:
        self.stored.append(ds)


def test_watcher_records_a_poison_study_and_instances_and_goes_on(tmp_path: Path, capsys) -> None:
    """A StudyInstanceUID with '/' (dicomweb-client raises ValueError) used to end --watch with a traceback on
    every restart. Now it is recorded as a failed study; a series-metadata item pydicom cannot parse (DS "abc")
    and a 2-value ImagePositionPatient are failed instances; the good image of the study after it gets its SEG;
    a restart does not open the bad study again, --retry-failed does, --list-failed shows it."""
    study = "1.2.826.0.1.3680043.8.498.25"
    good, text_spacing, position = _still(study), _still(study), _two_value_position(study)
    item = text_spacing.to_json_dict()
    item["00280030"] = {"vr": "DS", "Value": ["abc", "def"]}
    pacs = MemoryPacs({BAD_STUDY: [_still(BAD_STUDY)], study: [text_spacing, good, position]},
                      {str(text_spacing.SOPInstanceUID): item})
    with StateDB(tmp_path / "state.sqlite") as state:
        summary = Pipeline(pacs, Segmenter(ThresholdPredictor()), state, settle_s=0).run_once()
        assert summary.stored == [str(good.SOPInstanceUID)] and len(pacs.stored) == 2  # its SR and SEG
        assert re.search(r"study 1\.2\.3/\.\./x: ValueError: .*1\.2\.3/\.\./x", summary.failed[BAD_STUDY])
        assert [f.study_instance_uid for f in state.study_failures()] == [BAD_STUDY]
        assert "could not convert string to float: 'abc'" in state.get(str(text_spacing.SOPInstanceUID)).reason
        assert re.search(POISONS[_two_value_position], state.get(str(position.SOPInstanceUID)).reason)
        pacs.listed.clear()
        assert not Pipeline(pacs, Segmenter(ThresholdPredictor()), state, settle_s=0).run_once().failed
        assert pacs.listed == []  # a restart passes over the bad study (and the finished one)
        retried = Pipeline(pacs, Segmenter(ThresholdPredictor()), state, settle_s=0).run_once(retry_failed=True)
        assert pacs.listed == [BAD_STUDY, study] and len(retried.failed) == 3 and len(pacs.stored) == 2
        assert state.study_failures()[0].attempts == 2
    assert main(["--list-failed", "--state", str(tmp_path / "state.sqlite")]) == 0
    assert f"{BAD_STUDY}\t2\tstudy {BAD_STUDY}: ValueError" in capsys.readouterr().out


def test_refusal_of_a_sop_class_highdicom_cannot_reference_names_the_file(tmp_path: Path) -> None:
    """Issue 25, point 13: this refusal came from the SEG builder and named '<dataset>' instead of the file."""
    still = _still()
    still.SOPClassUID = still.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6"  # retired US Image
    path = write_atomic(still, tmp_path / "retired_us.dcm")
    summary = segment_files([path], tmp_path / "out", Segmenter(ThresholdPredictor()))
    assert "unknown to highdicom" in summary.failed[str(path)]
    with pytest.raises(UnsupportedDicomError, match="unknown to highdicom") as err:
        Segmenter(ThresholdPredictor()).segment([still], str(path))
    assert str(err.value).startswith(f"{path} (SOPInstanceUID {still.SOPInstanceUID})"), str(err.value)


def _main_with_threshold_model(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    """``vmunetv2-dicom`` ARGV with :class:`ThresholdPredictor` in place of the network (these tests are about
    the command's rules, not the model)."""
    monkeypatch.setattr(cli_module, "make_segmenter", lambda args: Segmenter(
        ThresholdPredictor(), window=tuple(args.window) if args.window else None, overlay=args.overlay,
        copy_attributes=tuple(args.copy_attribute)))
    return main(argv)


@pytest.mark.parametrize("window", [("nan", "nan"), ("40", "inf"), ("40", "0"), ("40", "-5")])
def test_a_window_that_is_not_finite_or_positive_is_refused_at_parsing(tmp_path: Path, capsys,
                                                                         window: tuple[str, str]) -> None:
    """Issue 26, group I: '--window nan nan' gave an empty SEG with exit status 0."""
    _, path = _good(tmp_path)
    with pytest.raises(SystemExit) as err:
        main(["--files", str(path), "--output-dir", str(tmp_path / "out"), "--window", *window])
    assert err.value.code == 2
    assert f"--window {float(window[0]):g} {float(window[1]):g}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _zero_length_pixels(ds: Dataset) -> None:
    ds.PixelData = b""


def _truncated_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:10]


@pytest.mark.parametrize("damage, reason", [(_zero_length_pixels, "zero-length pixel data"),
                                            (_truncated_pixels, "truncated pixel data")])
def test_a_broken_copy_does_not_refuse_the_good_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage,
                                                     reason: str) -> None:
    """Issue 26, group I: duplicates were looked for before validation, so a broken copy listed first made the good
    copy with the same SOPInstanceUID be refused; zero-length PixelData gave a bare TypeError."""
    good, other = _still(), _still()
    broken = _still()
    damage(broken)
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = good.SOPInstanceUID
    paths = [write_atomic(ds, tmp_path / "in" / name) for ds, name in
             ((broken, "a_broken.dcm"), (good, "b_good.dcm"), (other, "c_other.dcm"))]
    out = tmp_path / "out"
    assert _main_with_threshold_model(monkeypatch, ["--files", *map(str, paths), "--output-dir", str(out)]) == 1
    summary = segment_files(paths, out, Segmenter(ThresholdPredictor()))
    assert summary.stored == [str(paths[1]), str(paths[2])]
    assert list(summary.failed) == [str(paths[0])] and reason in summary.failed[str(paths[0])]
    assert len(list(out.glob("*.dcm"))) == 4  # a SEG and an SR each
    with pytest.raises(UnsupportedDicomError, match=reason) as err:
        load_image(paths[0])
    assert str(err.value).startswith(str(paths[0]))


@pytest.mark.parametrize("key, value", [("SOPInstanceUID", "../../x"), ("StudyInstanceUID", "1.2.3/../x"),
                                        ("SeriesInstanceUID", "1." + "2" * 64), ("FrameOfReferenceUID", "1.2.a")])
def test_invalid_source_uids_are_refused_and_the_others_get_their_seg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      key: str, value: str) -> None:
    """Issue 25, point 11: an invalid source UID was copied into the SEG (67 dciodvfy errors)."""
    bad, good = _still(), _still()
    setattr(bad, key, value)
    if key == "SOPInstanceUID":
        bad.file_meta.MediaStorageSOPInstanceUID = value
    paths = [write_atomic(bad, tmp_path / "in" / "bad.dcm"), write_atomic(good, tmp_path / "in" / "good.dcm")]
    out = tmp_path / "out"
    assert _main_with_threshold_model(monkeypatch, ["--files", str(tmp_path / "in"), "--output-dir", str(out)]) == 1
    summary = segment_files(paths, out, Segmenter(ThresholdPredictor()))
    assert summary.stored == [str(paths[1])]
    assert summary.failed[str(paths[0])].startswith(f"invalid {key} {value!r}"), summary.failed
    written = sorted(out.glob("*.dcm"))
    assert sorted(str(pydicom.dcmread(p).SOPClassUID) for p in written) == [SEG_SOP_CLASS_UID, SR_SOP_CLASS_UID]
    assert_valid_dicom(written)


#: type-3 patient attributes and a RequestingService that the SEG used to copy (issue 25, point 12)
UNNEEDED = ("PatientComments", "OtherPatientIDsSequence", "PatientWeight", "PatientSize", "RequestingService")


def test_seg_and_overlay_carry_only_the_required_patient_and_study_attributes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25, point 12: only what the SEG and SC IODs require, plus --copy-attribute; dciodvfy 0 errors."""
    still = _still()
    still.PatientComments, still.PatientAge, still.PatientWeight, still.PatientSize = "private note", "054Y", 70, 1.7
    still.RequestingService = "Gastroenterology"
    other_id = Dataset()
    other_id.PatientID, other_id.IssuerOfPatientID, other_id.TypeOfPatientID = "OTHER-1", "HOSP", "TEXT"
    still.OtherPatientIDsSequence = [other_id]
    path = write_atomic(still, tmp_path / "in" / "still.dcm")
    out = tmp_path / "out"
    argv = ["--files", str(path), "--output-dir", str(out), "--overlay", "--copy-attribute", "PatientAge"]
    assert _main_with_threshold_model(monkeypatch, argv) == 0
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 3  # SEG, overlay, SR
    assert_valid_dicom(written)
    for dcm in written:
        ds = pydicom.dcmread(dcm)
        assert [k for k in UNNEEDED if k in ds] == [], dcm
        assert ds.PatientAge == "054Y" and ds.PatientID == still.PatientID and ds.PatientName == still.PatientName
        assert ds.StudyInstanceUID == still.StudyInstanceUID
    with pytest.raises(SystemExit) as err:
        main(["--files", str(path), "--output-dir", str(out), "--copy-attribute", "PatientAgee"])
    assert err.value.code == 2


def test_files_mode_scans_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Issue 25, point 13: '--files <folder>' was refused instead of scanned; non-DICOM files are skipped, logged."""
    first = write_atomic(_still(), tmp_path / "in" / "a.dcm")
    second = write_atomic(_still(), tmp_path / "in" / "deeper" / "IM0001")  # no suffix, as on many exports
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="vmunetv2_monai.dicom.local")
    assert _main_with_threshold_model(monkeypatch, ["--files", str(tmp_path / "in"), "--output-dir", str(out)]) == 0
    assert len(list(out.glob("*.dcm"))) == 4  # a SEG and an SR each
    assert f"skipped {tmp_path / 'in' / 'notes.txt'}: not a DICOM file" in caplog.text
    assert dicom_files([tmp_path / "in"]) == [first, second]


def test_network_json_keeps_the_bundles_network_settings(tmp_path: Path) -> None:
    """Issue 26, group I: --network-json replaced the bundle's network_def, so keep_unused_stage came from the class
    default (True) and a checkpoint trained by the bundle (false) did not load."""
    torch.manual_seed(0)
    size = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 8, "mid_channels": 8}
    checkpoint = tmp_path / "bundle_trained.pt"
    torch.save(VMUNetV2(**size, keep_unused_stage=False).state_dict(), checkpoint)  # as train.json builds it
    args = build_parser().parse_args(["--checkpoint", str(checkpoint), "--network-json", json.dumps(size)])
    predictor = _predictor(args)
    assert predictor.predict(np.full((3, 24, 32), 120, dtype=np.float32)).shape == (24, 32)
    bundled = _predictor(build_parser().parse_args(["--bundle-dir", str(REPO / "bundle"), "--checkpoint",
                                                    str(checkpoint), "--network-json", json.dumps(size)]))
    assert bundled.network.state_dict().keys() == predictor.network.state_dict().keys()


def test_temporary_files_are_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26, group I: nothing is left in the temporary folder or beside the outputs after a run with a good and
    a broken file; a spool write cut short by a kill, and the partial file of a C-STORE whose association was
    dropped by the peer, are removed by the listener."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    good = write_atomic(_still(), tmp_path / "in" / "good.dcm")
    (tmp_path / "in" / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    out = tmp_path / "out"
    assert _main_with_threshold_model(monkeypatch, ["--files", str(tmp_path / "in"), "--output-dir", str(out),
                                                    "--overlay"]) == 1
    assert list(temp.iterdir()) == []
    assert sorted(p.suffix for p in out.iterdir()) == [".dcm"] * 3  # SEG, overlay, SR
    assert good.is_file()

    spool = tmp_path / "spool"
    spool.mkdir()
    stale = spool / ".tmp4000000-1.2.3.dcm"  # a copy_atomic of a process that is gone
    stale.write_bytes(b"partial")
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(Segmenter(ThresholdPredictor()), state, spool, RemoteAE("DEST", "127.0.0.1", 1))
        assert not stale.exists()
        with tempfile.NamedTemporaryFile(delete=False, suffix=".dcm") as partial:  # as pynetdicom streams a dataset
            partial.write(b"\0" * 128 + b"DICM")
            message = SimpleNamespace(_data_set_file=partial)
            listener._on_closed(SimpleNamespace(assoc=SimpleNamespace(dimse=SimpleNamespace(message=message))))
    assert list(temp.iterdir()) == []


#: pydicom / pydicom-data test files that ended with an unnamed AttributeError / ValueError (issue 25, points 1-2)
#: -> what the refusal says (None: the file gets its SEG); one file per SOP instance UID
TESTDATA_CASES = {
    "SC_jpeg_no_color_transform.dcm": None, "GDCMJ2K_TextGBR.dcm": None,  # no Modality: segmented as OT
    "rtdose_1frame.dcm": "has a multi-frame IOD, and this image has no Shared Functional Groups Sequence",
    "693_UNCR.dcm": "missing FrameOfReferenceUID, which the IOD of its SOP class (CT Image Storage) requires",
    "badVR.dcm": "NumberOfFrames '1A' is not a number",
    "MR2_UNCR.dcm": "share an Image Position (Patient)", "MR2_J2KR.dcm": "share an Image Position (Patient)",
}


def test_testdata_files_get_a_seg_or_a_named_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """``vmunetv2-dicom --files ... --overlay`` over them: exit status 1, each refusal logged naming its file and
    reason, every other file's SEG, SR and overlay written, and what the output folder held before is intact."""
    from pydicom.data import get_testdata_file

    paths = {name: Path(get_testdata_file(name)) for name in TESTDATA_CASES}
    out = tmp_path / "out"
    earlier = write_atomic(_still(), out / "earlier.dcm")
    before = earlier.read_bytes()
    with caplog.at_level("WARNING"):
        rc = _main_with_threshold_model(monkeypatch, ["--files", *map(str, paths.values()), "--output-dir", str(out),
                                                      "--overlay"])
    assert rc == 1
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    for name, reason in TESTDATA_CASES.items():
        if reason is None:
            assert not any(name in m for m in refusals), name
        else:  # named: by its path, or (slices of one series) by its file name inside the reason
            assert any(name in m and reason in m for m in refusals), (name, refusals)
    written = sorted(p for p in out.iterdir() if p != earlier)
    segmented = [n for n, r in TESTDATA_CASES.items() if r is None]
    assert len(written) == 3 * len(segmented)  # SEG, SR, overlay each
    assert sorted(str(pydicom.dcmread(p).Modality) for p in written).count("SEG") == len(segmented)
    assert_valid_dicom(written)
    assert earlier.read_bytes() == before
