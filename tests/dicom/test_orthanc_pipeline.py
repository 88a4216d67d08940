"""End to end against a real Orthanc: upload DICOM, run the pipeline, fetch the SEGs back and check them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests._servers import free_port
from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.dicom.algorithm import AlgorithmInfo
from vmunetv2_monai.dicom.cli import main
from vmunetv2_monai.dicom.dicomweb import PacsClient, is_transient
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.reader import load_image
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID, seg_mask_for_source, seg_uid_for
from vmunetv2_monai.dicom.sr import SR_SOP_CLASS_UID, read_report_back, sr_uid_for
from vmunetv2_monai.dicom.state import DONE, FAILED, StateDB
from vmunetv2_monai.dicom.voi import grey_window

from .conftest import (
    REPO,
    Orthanc,
    assert_valid_dicom,
    ct_series,
    kvasir_image_paths,
    load_rgb,
    ultrasound_files,
    wrap_vl_endoscopic,
)

pytestmark = pytest.mark.slow  # starts Orthanc servers and the pipeline in subprocesses

KILL_TIMEOUT_S = 600.0  # generous: a loaded 2-core machine; a passing run takes far less


def _good_sources(n_kvasir: int, ultrasound: bool) -> list[pydicom.Dataset]:
    study = pydicom.uid.generate_uid()
    sources = [wrap_vl_endoscopic(load_rgb(p), study_uid=study) for p in kvasir_image_paths(n_kvasir)]
    if ultrasound:
        # one real RGB ultrasound file (US1_J2KR holds the same pixels, checked in test_dicom_io; 480x640 is slow)
        sources.append(pydicom.dcmread(ultrasound_files()["US1_UNCR.dcm"]))
    return sources


_EXPECTED: dict[str, np.ndarray] = {}


def _direct(predictor: Predictor, src: pydicom.Dataset) -> np.ndarray:
    """Direct inference on the source's pixels (cached per SOPInstanceUID: it is the slow part)."""
    uid = str(src.SOPInstanceUID)
    if uid not in _EXPECTED:
        _EXPECTED[uid] = predictor.predict(load_image(src).image)
    return _EXPECTED[uid]


def _bad_sources() -> list[pydicom.Dataset]:
    multi = pydicom.dcmread(get_testdata_file("SC_rgb_2frame.dcm"))
    no_pixels = wrap_vl_endoscopic(np.zeros((8, 8, 3), np.uint8))
    del no_pixels.PixelData
    return [multi, no_pixels]


def _segs(client: PacsClient) -> list[pydicom.Dataset]:
    return [client.retrieve(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
            for r in client.list_instances() if r.sop_class_uid == SEG_SOP_CLASS_UID]


def _check_segs(client: PacsClient, sources: list[pydicom.Dataset], predictor: Predictor,
                series: list[pydicom.Dataset] = ()) -> list[pydicom.Dataset]:
    """Exactly one SEG per still and one multi-frame SEG for the series, referencing them, parsed by highdicom,
    masks == direct inference. Returns the SEG datasets."""
    datasets = _segs(client)
    assert len(datasets) == len(sources) + (1 if series else 0), [s.SOPInstanceUID for s in datasets]
    by_source: dict[str, hd.seg.Segmentation] = {}
    for ds in datasets:
        seg = hd.seg.Segmentation.from_dataset(ds)
        for ref in (str(t[2]) for t in seg.get_source_image_uids()):
            assert ref not in by_source, f"duplicate SEG for {ref}"
            by_source[ref] = seg
    for src in sources:
        uid = str(src.SOPInstanceUID)
        seg = by_source[uid]
        assert seg.SOPInstanceUID == seg_uid_for(uid, AlgorithmInfo()) and seg.NumberOfFrames == 1
        assert seg.StudyInstanceUID == src.StudyInstanceUID
        got = seg_mask_for_source(seg, uid)
        np.testing.assert_array_equal(got, _direct(predictor, src), err_msg=f"mask differs for {uid}")
        assert got.shape == (src.Rows, src.Columns)
    if series:
        seg = by_source[str(series[0].SOPInstanceUID)]
        assert seg.NumberOfFrames == len(series)
        assert seg.SOPInstanceUID == seg_uid_for([str(d.SOPInstanceUID) for d in series], AlgorithmInfo())
        window = grey_window(series[0])
        for ds in series:
            expected = predictor.predict(load_image(ds, window=window).image)
            np.testing.assert_array_equal(seg_mask_for_source(seg, str(ds.SOPInstanceUID)), expected)
    return datasets


def _reports(client: PacsClient, segs: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The SRs in the PACS: exactly one per SEG (referencing it, and its sources), read back by highdicom."""
    refs = [r for r in client.list_instances() if r.sop_class_uid == SR_SOP_CLASS_UID]
    reports = [client.retrieve(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid) for r in refs]
    seg_of = {}
    for ds in reports:
        read_report_back(ds)
        items = [i for study in ds.CurrentRequestedProcedureEvidenceSequence
                 for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence]
        (seg_uid,) = [str(i.ReferencedSOPInstanceUID) for i in items if i.ReferencedSOPClassUID == SEG_SOP_CLASS_UID]
        seg_of[str(ds.SOPInstanceUID)] = seg_uid
    assert sorted(seg_of.values()) == sorted(str(s.SOPInstanceUID) for s in segs), "not one SR per SEG"
    for seg in segs:
        sources = [str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                   for item in series.ReferencedInstanceSequence]
        assert sr_uid_for(sources, AlgorithmInfo()) in seg_of
    return reports


def _pipeline_args(orthanc: Orthanc, state: Path, ckpt: Path, network_json: str) -> list[str]:
    return ["--url", orthanc.url, "--state", str(state), "--checkpoint", str(ckpt), "--network-json", network_json,
            "--log-level", "WARNING", "--settle", "0"]


def _windowed_ct(n: int, study: str) -> list[pydicom.Dataset]:
    slices = ct_series(n, study_uid=study)
    for ds in slices:
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    return slices


def test_pipeline_end_to_end(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path, network_json: str,
                             predictor: Predictor, caplog: pytest.LogCaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    client = PacsClient(orthanc.url)
    good, bad = _good_sources(3, ultrasound=True), _bad_sources()
    series = _windowed_ct(5, str(good[0].StudyInstanceUID))
    for ds in good[:2] + bad[:1] + series + good[2:] + bad[1:]:  # bad ones among the good ones
        client.store(ds)
    state = tmp_path / "state.sqlite"
    args = _pipeline_args(orthanc, state, tiny_checkpoint, network_json)
    retrieved: list[str] = []
    original = PacsClient.retrieve

    def spy(self: PacsClient, study: str, series_uid: str, sop: str) -> pydicom.Dataset:
        retrieved.append(sop)
        return original(self, study, series_uid, sop)

    monkeypatch.setattr(PacsClient, "retrieve", spy)

    waiting = args[:-1] + ["3600"]  # stable-series rule: a series first seen now has not settled
    assert main(waiting + ["--overlay"]) == 1  # refusals -> exit 1; the stills are done, the series waits
    with StateDB(state) as db:
        assert not any(db.get(str(d.SOPInstanceUID)) for d in series)  # waiting, not failed or done
        assert db.study_count(str(series[0].StudyInstanceUID)) is None  # the study is listed again next pass

    assert main(args + ["--overlay"]) == 0  # the refusals were recorded by the first pass; the series is done now
    segs = _check_segs(client, good, predictor, series)
    overlays = [r for r in client.list_instances() if r.manufacturer == "vmunetv2-monai"
                and r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(overlays) == len(good) + len(series)
    reports = _reports(client, segs)  # an SR beside each SEG, stored once
    objects = segs + reports + [client.retrieve(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
                                for r in overlays]
    assert_valid_dicom([write_atomic(ds, tmp_path / "out" / f"{ds.SOPInstanceUID}.dcm") for ds in objects])
    with StateDB(state) as db:
        assert db.counts()[DONE] == len(good) + len(series)
        failed = {r.sop_instance_uid: r for r in db.records(FAILED)}
    assert set(failed) == {str(b.SOPInstanceUID) for b in bad}
    assert "multi-frame" in failed[str(bad[0].SOPInstanceUID)].reason
    assert "missing pixel data" in failed[str(bad[1].SOPInstanceUID)].reason
    assert any("multi-frame" in rec.getMessage() for rec in caplog.records)
    # refused from the metadata: not downloaded. Orthanc's metadata of an image without pixel data looks like that of
    # a compressed image (no pixel data element), so that one is retrieved and refused then.
    assert str(bad[0].SOPInstanceUID) not in retrieved, "an instance refused from its metadata was downloaded"
    assert retrieved.count(str(bad[1].SOPInstanceUID)) == 1

    n_before = len(client.list_instances())
    assert main(args) == 0  # nothing new, failures not retried unless asked; SEGs and overlays skipped
    assert len(client.list_instances()) == n_before
    with StateDB(state) as db:
        skipped = {r.sop_instance_uid: r.reason for r in db.records("skipped")}
    assert {r.sop_instance_uid for r in overlays} | {str(r.SOPInstanceUID) for r in reports} <= set(skipped)
    assert "created by this pipeline" in skipped[overlays[0].sop_instance_uid]
    retrieved.clear()
    assert main(args) == 0  # incremental: no study changed, nothing opened
    assert not retrieved

    assert main(args + ["--retry-failed"]) == 1  # retried on request, still refused, attempts counted
    with StateDB(state) as db:
        assert all(r.attempts == 2 for r in db.records(FAILED))
    assert len(client.list_instances()) == n_before
    _reports(client, _check_segs(client, good, predictor, series))  # still one SEG and one SR each


def test_compressed_images_are_retrieved_as_stored_or_transcoded(orthanc: Orthanc) -> None:
    """Retrieval asks for the stored transfer syntax and decodes here (a JPEG-LS image comes back as JPEG-LS with the
    same pixels as the file); an image pydicom cannot decode here (12-bit JPEG Extended, no 12-bit JPEG decoder in
    pylibjpeg or Pillow) is asked for again in explicit VR little endian, and Orthanc transcodes it."""
    from pydicom.data import get_testdata_file

    from vmunetv2_monai.dicom.reader import decode_problem

    client = PacsClient(orthanc.url)
    jpeg_ls = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    client.store(jpeg_ls)
    got = client.retrieve(str(jpeg_ls.StudyInstanceUID), str(jpeg_ls.SeriesInstanceUID), str(jpeg_ls.SOPInstanceUID))
    assert got.file_meta.TransferSyntaxUID == jpeg_ls.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(got.pixel_array, jpeg_ls.pixel_array)

    jpeg12 = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    assert decode_problem(pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))) is not None  # the premise
    client.store(jpeg12)
    got = client.retrieve(str(jpeg12.StudyInstanceUID), str(jpeg12.SeriesInstanceUID), str(jpeg12.SOPInstanceUID))
    assert got.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert got.pixel_array.shape == (jpeg12.Rows, jpeg12.Columns)


#: pydicom / pydicom-data test files, one or two per compressed transfer syntax that decodes here (issue 25,
#: point 2 case 4): colour stills and single MR slices (a one-slice volume).
COMPRESSED_FILES = {
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG Baseline, YBR_FULL
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",  # JPEG Extended, 8-bit greyscale
    "SC_rgb_jpeg_gdcm.dcm": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1, RGB
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "SC_rgb_gdcm_KY.dcm": "1.2.840.10008.1.2.4.91",  # JPEG 2000, RGB
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",  # RLE, RGB
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE, 16-bit greyscale
}


def _with_new_uids(name: str, folder: Path) -> Path:
    """A copy of a pydicom test file with its own study, series and instance UIDs (several of these files share
    them), pixel data untouched."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return write_atomic(ds, folder / name)


def test_compressed_images_in_orthanc_get_segs(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path,
                                               network_json: str, predictor: Predictor,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25, point 2 case 4: Orthanc's series metadata leaves out encapsulated pixel data, and every compressed
    image was refused as "missing pixel data". Now each gets a SEG: one per transfer syntax of
    :data:`COMPRESSED_FILES`, with 0 dciodvfy errors, read back by highdicom, and a mask equal to that of
    ``--files`` on the same file; the 12-bit JPEG that pydicom cannot decode here gets one from Orthanc's
    transcoding (and ``--files`` refuses it, naming the decoder error)."""
    client = PacsClient(orthanc.url)
    inputs = tmp_path / "in"
    paths = {name: _with_new_uids(name, inputs) for name in COMPRESSED_FILES}
    jpeg12 = _with_new_uids("JPEG-lossy.dcm", tmp_path / "in12")
    sources = {name: pydicom.dcmread(path) for name, path in paths.items()}
    for name, ds in sources.items():
        assert ds.file_meta.TransferSyntaxUID == COMPRESSED_FILES[name], name
        client.store(ds)
    client.store(pydicom.dcmread(jpeg12))
    for ds in sources.values():  # the premise: no pixel data element in Orthanc's metadata of these
        headers, _ = client.series_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        assert "PixelData" not in headers[str(ds.SOPInstanceUID)]

    state = tmp_path / "state.sqlite"
    assert main(_pipeline_args(orthanc, state, tiny_checkpoint, network_json)) == 0
    with StateDB(state) as db:
        assert db.counts()[DONE] == len(paths) + 1 and not db.records(FAILED)
    segs = {str(hd.seg.Segmentation.from_dataset(ds).get_source_image_uids()[0][2]): ds for ds in _segs(client)}
    assert len(segs) == len(paths) + 1
    written = [write_atomic(ds, tmp_path / "from-orthanc" / f"{ds.SOPInstanceUID}.dcm") for ds in segs.values()]
    assert_valid_dicom(written)

    local = tmp_path / "files-out"
    args = ["--checkpoint", str(tiny_checkpoint), "--network-json", network_json, "--log-level", "WARNING"]
    assert main(["--files", str(inputs), "--output-dir", str(local), *args]) == 0
    local_segs = {}
    for path in local.iterdir():
        if pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID == SEG_SOP_CLASS_UID:  # not the SR beside it
            seg = hd.seg.segread(path)
            local_segs[str(seg.get_source_image_uids()[0][2])] = seg
    assert len(local_segs) == len(paths)
    for name, source in sources.items():
        uid = str(source.SOPInstanceUID)
        seg = hd.seg.Segmentation.from_dataset(segs[uid])
        assert seg.SOPInstanceUID == local_segs[uid].SOPInstanceUID == seg_uid_for(uid, AlgorithmInfo())
        mask = seg_mask_for_source(seg, uid)
        assert mask.shape == (source.Rows, source.Columns), name
        np.testing.assert_array_equal(mask, seg_mask_for_source(local_segs[uid], uid), err_msg=name)

    source12 = pydicom.dcmread(jpeg12)
    transcoded = client.retrieve(str(source12.StudyInstanceUID), str(source12.SeriesInstanceUID),
                                 str(source12.SOPInstanceUID))
    window = grey_window(transcoded)
    expected = predictor.predict(load_image(transcoded, window=window).image)
    got = seg_mask_for_source(hd.seg.Segmentation.from_dataset(segs[str(source12.SOPInstanceUID)]),
                              str(source12.SOPInstanceUID))
    np.testing.assert_array_equal(got, expected)
    assert main(["--files", str(jpeg12), "--output-dir", str(tmp_path / "out12"), *args]) == 1
    assert not (tmp_path / "out12").exists() or not list((tmp_path / "out12").iterdir())
    assert "pixel data cannot be decoded" in caplog.text


def test_kill_mid_run_and_restart(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path, network_json: str,
                                  predictor: Predictor) -> None:
    client = PacsClient(orthanc.url)
    good = _good_sources(6, ultrasound=False)
    for ds in good:
        client.store(ds)
    state = tmp_path / "state.sqlite"
    args = _pipeline_args(orthanc, state, tiny_checkpoint, network_json)
    cmd = [sys.executable, "-m", "vmunetv2_monai.dicom.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tmp_path / "service.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not any(r.sop_class_uid == SEG_SOP_CLASS_UID for r in client.list_instances()):
            assert proc.poll() is None, f"service ended before storing a SEG: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no SEG stored in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    stored_at_kill = len(_segs(client))
    assert 1 <= stored_at_kill < len(good), "kill came too late to test a restart"

    assert main(args) == 0
    _reports(client, _check_segs(client, good, predictor))  # a SR stored before the kill is not stored twice
    with StateDB(state) as db:
        assert db.counts()[DONE] == len(good)
    n = len(client.list_instances())
    assert main(args) == 0
    assert len(client.list_instances()) == n


def test_unreachable_pacs_fails_at_once() -> None:
    """A refused connection ends the request at once (dicomweb-client's own 5 retries, 30 s, are off): the
    watcher's back-off alone decides when the PACS is tried again."""
    client = PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=5)
    start = time.monotonic()
    with pytest.raises(Exception) as err:
        list(client.iter_studies())
    assert is_transient(err.value), err.value
    assert time.monotonic() - start < 10


def test_watch_survives_pacs_outage(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path,
                                    network_json: str) -> None:
    """--watch: Orthanc stopped mid-watch -> a log line per failed try with back-off; restarted -> catches up."""
    client = PacsClient(orthanc.url)
    first, second = _good_sources(2, ultrasound=False)
    client.store(first)
    args = _pipeline_args(orthanc, tmp_path / "state.sqlite", tiny_checkpoint, network_json)
    cmd = [sys.executable, "-m", "vmunetv2_monai.dicom.cli", *args, "--watch", "--interval", "0.5",
           "--max-backoff", "2"]
    cmd[cmd.index("WARNING")] = "INFO"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tmp_path / "watch.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    def wait(predicate, what: str) -> None:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not predicate():
            assert proc.poll() is None, f"watcher ended: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} not in time: {log.read_text()[-3000:]}"
            time.sleep(0.2)

    try:
        wait(lambda: len(_segs(client)) == 1, "first SEG")
        orthanc.stop()
        wait(lambda: log.read_text().count("PACS unavailable") >= 3, "three failed tries")
        orthanc.start()
        client.store(second)
        wait(lambda: len(_segs(client)) == 2, "SEG after the outage")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "failure 1 in a row" in text and "failure 3 in a row" in text and "next try in 2 s" in text
