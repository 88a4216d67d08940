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

from vmunetv2_monai.dicom.algorithm import AlgorithmInfo
from vmunetv2_monai.dicom.dicomweb import PacsClient
from vmunetv2_monai.dicom.pipeline import main
from vmunetv2_monai.dicom.reader import load_image
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID, seg_mask_for_source, seg_uid_for
from vmunetv2_monai.dicom.state import DONE, FAILED, StateDB
from vmunetv2_monai.inference import Predictor

from .conftest import REPO, Orthanc, kvasir_image_paths, load_rgb, ultrasound_files, wrap_vl_endoscopic

KILL_TIMEOUT_S = 120.0


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
    return [client.retrieve(r) for r in client.list_instances() if r.sop_class_uid == SEG_SOP_CLASS_UID]


def _check_segs(client: PacsClient, sources: list[pydicom.Dataset], predictor: Predictor) -> None:
    """Exactly one SEG per source, referencing it, parsed by highdicom, mask == direct inference."""
    segs = _segs(client)
    assert len(segs) == len(sources), [s.SOPInstanceUID for s in segs]
    by_source: dict[str, pydicom.Dataset] = {}
    for ds in segs:
        seg = hd.seg.Segmentation.from_dataset(ds)
        refs = [str(t[2]) for t in seg.get_source_image_uids()]
        assert len(refs) == 1
        assert refs[0] not in by_source, f"duplicate SEG for {refs[0]}"
        by_source[refs[0]] = seg
    for src in sources:
        uid = str(src.SOPInstanceUID)
        seg = by_source[uid]
        assert seg.SOPInstanceUID == seg_uid_for(uid, AlgorithmInfo())
        assert seg.StudyInstanceUID == src.StudyInstanceUID
        expected = _direct(predictor, src)
        got = seg_mask_for_source(seg, uid)
        np.testing.assert_array_equal(got, expected, err_msg=f"mask differs for {uid}")
        assert got.shape == (src.Rows, src.Columns)


def _pipeline_args(orthanc: Orthanc, state: Path, ckpt: Path, network_json: str) -> list[str]:
    return ["--url", orthanc.url, "--state", str(state), "--checkpoint", str(ckpt), "--network-json", network_json,
            "--log-level", "WARNING"]


def test_pipeline_end_to_end(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path, network_json: str,
                             predictor: Predictor, caplog: pytest.LogCaptureFixture) -> None:
    client = PacsClient(orthanc.url)
    good, bad = _good_sources(3, ultrasound=True), _bad_sources()
    for ds in good[:2] + bad[:1] + good[2:] + bad[1:]:  # bad ones among the good ones
        client.store(ds)
    state = tmp_path / "state.sqlite"
    args = _pipeline_args(orthanc, state, tiny_checkpoint, network_json)

    assert main(args + ["--overlay"]) == 1  # failures present -> exit 1, but the good ones are done
    _check_segs(client, good, predictor)
    overlays = [r for r in client.list_instances() if r.manufacturer == "vmunetv2-monai"
                and r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(overlays) == len(good)
    with StateDB(state) as db:
        assert db.counts()[DONE] == len(good)
        failed = {r.sop_instance_uid: r for r in db.records(FAILED)}
    assert set(failed) == {str(b.SOPInstanceUID) for b in bad}
    assert "multi-frame" in failed[str(bad[0].SOPInstanceUID)].reason
    assert "missing pixel data" in failed[str(bad[1].SOPInstanceUID)].reason
    assert any("multi-frame" in rec.getMessage() for rec in caplog.records)

    n_before = len(client.list_instances())
    assert main(args) == 0  # nothing new, failures not retried unless asked; SEGs and overlays skipped
    assert len(client.list_instances()) == n_before
    with StateDB(state) as db:
        skipped = {r.sop_instance_uid: r.reason for r in db.records("skipped")}
    assert {r.sop_instance_uid for r in overlays} <= set(skipped)
    assert "created by this pipeline" in skipped[overlays[0].sop_instance_uid]

    assert main(args + ["--retry-failed"]) == 1  # retried on request, still refused, attempts counted
    with StateDB(state) as db:
        assert all(r.attempts == 2 for r in db.records(FAILED))
    assert len(client.list_instances()) == n_before
    _check_segs(client, good, predictor)


def test_kill_mid_run_and_restart(orthanc: Orthanc, tmp_path: Path, tiny_checkpoint: Path, network_json: str,
                                  predictor: Predictor) -> None:
    client = PacsClient(orthanc.url)
    good = _good_sources(6, ultrasound=False)
    for ds in good:
        client.store(ds)
    state = tmp_path / "state.sqlite"
    args = _pipeline_args(orthanc, state, tiny_checkpoint, network_json)
    cmd = [sys.executable, "-m", "vmunetv2_monai.dicom.pipeline", *args]
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
    _check_segs(client, good, predictor)
    with StateDB(state) as db:
        assert db.counts()[DONE] == len(good)
    n = len(client.list_instances())
    assert main(args) == 0
    assert len(client.list_instances()) == n
