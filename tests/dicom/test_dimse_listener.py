"""DIMSE: Orthanc sends a study to our Storage SCP by C-STORE, the SEGs come back to Orthanc by C-STORE; a kill
mid-study and a restart lose nothing and store nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from tests._servers import free_port
from vmunetv2_monai.dicom.dicomweb import PacsClient
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.listener import Listener, RemoteAE, spool_path
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID
from vmunetv2_monai.dicom.state import DONE, StateDB
from vmunetv2_monai.dicom.units import Segmenter, UnitResult
from vmunetv2_monai.inference import Predictor

from .conftest import REPO, Orthanc, ct_series, kvasir_image_paths, load_rgb, wrap_vl_endoscopic

WAIT_S = 600.0  # generous: a loaded 2-core machine; a passing run takes far less


def test_destination_and_spool_names_are_checked(tmp_path: Path) -> None:
    assert RemoteAE.parse("ORTHANC@127.0.0.1:4242") == RemoteAE("ORTHANC", "127.0.0.1", 4242)
    with pytest.raises(ValueError, match="AET@host:port"):
        RemoteAE.parse("127.0.0.1:4242")
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    assert spool_path(tmp_path, ds) == tmp_path / "1.2.3.dcm"
    for bad in ("../../etc/passwd", "1.2/3", "1.2.3\x00", "1" * 65):
        ds.SOPInstanceUID = bad
        with pytest.raises(ValueError, match="not a valid SOPInstanceUID"):
            spool_path(tmp_path, ds)


class CountingSegmenter(Segmenter):
    """The real segmenter, counting its calls."""

    calls = 0

    def segment(self, unit: list[Dataset], source: str) -> UnitResult:
        self.calls += 1
        return super().segment(unit, source)


def test_failed_c_store_is_resent_without_segmenting_again(tmp_path: Path, predictor: Predictor) -> None:
    """Destination down: the image stays in the spool, not done, and each poll re-sends the SEG made once; when
    the destination is up, the same SEG arrives and the spool empties."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import SegmentationStorage

    port = free_port()
    segmenter = CountingSegmenter(predictor)
    still = wrap_vl_endoscopic(load_rgb(kvasir_image_paths(1)[0]))
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(segmenter, state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", port), settle_s=0)
        write_atomic(still, spool_path(listener.spool, still))
        assert listener.poll_once() == 0 and listener.poll_once() == 0  # nobody listens on the port
        assert segmenter.calls == 1 and state.get(str(still.SOPInstanceUID)) is None
        assert spool_path(listener.spool, still).is_file()

        received: list[str] = []

        def on_store(event: evt.Event) -> int:
            received.append(str(event.dataset.SOPInstanceUID))
            return 0x0000

        dest = AE(ae_title="DEST")
        dest.add_supported_context(SegmentationStorage)
        server = dest.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            assert listener.poll_once() == 1
        finally:
            server.shutdown()
        assert segmenter.calls == 1 and received == [segmenter.seg_uid([str(still.SOPInstanceUID)])]
        assert state.get(str(still.SOPInstanceUID)).status == DONE
        assert not list(listener.spool.glob("*.dcm"))


def _segs(orthanc: Orthanc) -> list[str]:
    refs = PacsClient(orthanc.url).list_instances()
    return [r.sop_instance_uid for r in refs if r.sop_class_uid == SEG_SOP_CLASS_UID]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _wait(predicate, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert proc.poll() is None, f"listener ended: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not in time: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_orthanc_sends_study_and_gets_segs_back_with_kill_and_restart(
    tmp_path: Path, tiny_checkpoint: Path, network_json: str
) -> None:
    listen_port = free_port()
    orthanc = Orthanc(tmp_path, modalities={"vmunet": ["VMUNETV2", "127.0.0.1", listen_port]})
    orthanc.start()
    proc = None
    try:
        client = PacsClient(orthanc.url)
        study = pydicom.uid.generate_uid()
        stills = [wrap_vl_endoscopic(load_rgb(p), study_uid=study) for p in kvasir_image_paths(3)]
        series = ct_series(3, study_uid=study)
        for ds in stills + series:
            client.store(ds)
        state, spool, log = tmp_path / "state.sqlite", tmp_path / "spool", tmp_path / "listener.log"
        cmd = [sys.executable, "-m", "vmunetv2_monai.dicom.pipeline", "--listen", "--listen-port", str(listen_port),
               "--destination", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "--spool", str(spool),
               "--state", str(state), "--checkpoint", str(tiny_checkpoint), "--network-json", network_json,
               "--settle", "2", "--log-level", "INFO"]
        proc = _start(cmd, log)
        _wait(lambda: "listening on 127.0.0.1" in log.read_text(), proc, log, "listener start")
        # Orthanc keys studies by patient too: the CT slices (another PatientID) are a second study resource
        resources = [r["ID"] for r in requests.post(orthanc.rest + "/tools/lookup", data=study, timeout=30).json()]
        assert len(resources) == 2
        sent = requests.post(orthanc.rest + "/modalities/vmunet/store", json={"Resources": resources,
                             "Synchronous": True}, timeout=120)
        assert sent.status_code == 200, sent.text
        _wait(lambda: len(_segs(orthanc)) >= 1, proc, log, "first SEG")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        at_kill = len(_segs(orthanc))
        assert at_kill < len(stills) + 1, "kill came too late to test a restart"

        proc = _start(cmd, log)
        expected = len(stills) + 1  # one SEG per still, one multi-frame SEG for the CT series
        _wait(lambda: len(_segs(orthanc)) >= expected and not list(spool.glob("*.dcm")), proc, log, "all SEGs")
        time.sleep(3)  # nothing more arrives
        assert len(_segs(orthanc)) == expected
        with StateDB(state) as db:
            assert db.counts()[DONE] == len(stills) + len(series)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        orthanc.stop()
