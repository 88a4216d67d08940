"""DIMSE: Orthanc sends a study to our Storage SCP by C-STORE, the SEGs come back to Orthanc by C-STORE; a kill
mid-study and a restart lose nothing and store nothing twice. What an administrator configures (issue 25, point 3),
tried with dcmtk's echoscu / storescu: C-ECHO, calling / called AE titles, object size limit, spool watermark, and
the back-off for a destination that is down."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from tests._servers import free_port
from vmunetv2_monai.dicom import listener as listener_module
from vmunetv2_monai.dicom.dicomweb import PacsClient
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.listener import Listener, ListenerLimits, RemoteAE, spool_path
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
    """Destination down: the image stays in the spool, not done, and the SEG made once is re-sent after the
    back-off; when the destination is up, the same SEG arrives and the spool empties."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import SegmentationStorage

    port = free_port()
    segmenter = CountingSegmenter(predictor)
    still = wrap_vl_endoscopic(load_rgb(kvasir_image_paths(1)[0]))
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(segmenter, state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", port), settle_s=0,
                            poll_interval=1.0)
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
            time.sleep(1.1)  # the back-off after one failed send: 1 s
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


class BrightPredictor:
    """Stands in for the model (these tests are about the listener): foreground where the channel mean is > 100."""

    intensity_rule = "test: channel mean > 100"

    def predict(self, image: np.ndarray) -> np.ndarray:
        return image.mean(axis=0) > 100


def _dcmtk(*args: str) -> subprocess.CompletedProcess:
    """Run a dcmtk tool (Debian ``dcmtk``; missing means fail)."""
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} not found: apt-get install dcmtk")
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def scp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """A listener on 127.0.0.1 (AE VMUNETV2) that accepts calling AE MODALITY only, objects up to 100 kB and a spool
    up to 250 kB; pynetdicom's temporary files go to ``tmp_path/incoming``."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(incoming))
    with StateDB(tmp_path / "state.sqlite") as state:
        made = Listener(Segmenter(BrightPredictor()), state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", 1),
                        port=free_port(), limits=ListenerLimits(("MODALITY",), 100_000, 250_000))
        made.start()
        try:
            yield made
        finally:
            made.shutdown()


def _still_file(tmp_path: Path, name: str, side: int) -> Path:
    return write_atomic(wrap_vl_endoscopic(np.full((side, side, 3), 150, np.uint8)), tmp_path / f"{name}.dcm")


def test_echo_and_ae_titles_are_checked_at_association(scp: Listener, tmp_path: Path) -> None:
    """echoscu from an allowed AE works; another calling AE title, or a called AE title other than ours, is
    rejected at association (no C-STORE gets through)."""
    where = ["127.0.0.1", str(scp.port)]
    assert _dcmtk("echoscu", "-aet", "MODALITY", "-aec", "VMUNETV2", *where).returncode == 0
    # dcmtk prints the reason in British or American spelling depending on its version
    for calling, called, reason in (("OTHER", "VMUNETV2", r"calling ae title not recogni[sz]ed"),
                                    ("MODALITY", "WRONG", r"called ae title not recogni[sz]ed")):
        for tool in (["echoscu"], ["storescu", str(_still_file(tmp_path, "small", 12))]):
            proc = _dcmtk(tool[0], "-aet", calling, "-aec", called, *where, *tool[1:])
            text = proc.stdout + proc.stderr
            assert proc.returncode != 0 and re.search(reason, text.lower()), text
    assert not list(scp.spool.glob("*.dcm"))
    proc = _dcmtk("storescu", "-aet", "MODALITY", "-aec", "VMUNETV2", *where, str(tmp_path / "small.dcm"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(scp.spool.glob("*.dcm"))) == 1


def test_large_object_is_aborted_and_a_full_spool_refuses_associations(
    scp: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1 MB object against a 100 kB limit: the association is aborted while it arrives, nothing reaches the
    spool and pynetdicom's partial file is removed. Above the spool watermark, new associations (C-ECHO too) are
    rejected as transient congestion until the spool empties."""
    where = ["127.0.0.1", str(scp.port)]
    big = _still_file(tmp_path, "big", 600)
    assert big.stat().st_size > 1_000_000
    with caplog.at_level(logging.INFO, logger="vmunetv2_monai.dicom.listener"):
        proc = _dcmtk("storescu", "-v", "-aet", "MODALITY", "-aec", "VMUNETV2", *where, str(big))
        deadline = time.monotonic() + 30
        while "removed the partial dataset" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    # The sender sees the abort as "Association Aborted", "Peer Aborted Association" (by dcmtk version) or, when the
    # abort lands mid-write, a broken pipe; in every case the store fails.
    assert re.search(r"association aborted|aborted association|store failed", (proc.stdout + proc.stderr).lower()), (
        proc.stdout + proc.stderr)
    assert "object larger than the 0.1 MB limit" in caplog.text and "removed the partial dataset" in caplog.text
    assert not list(scp.spool.glob("*.dcm")) and not list((tmp_path / "incoming").iterdir())

    medium = _still_file(tmp_path, "medium", 180)  # ~98 kB each: after three the spool is above 250 kB
    for i in range(3):
        filler = wrap_vl_endoscopic(np.full((180, 180, 3), 150, np.uint8))
        proc = _dcmtk("storescu", "-aet", "MODALITY", "-aec", "VMUNETV2", *where, str(write_atomic(
            filler, tmp_path / f"filler{i}.dcm")))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert scp.spool_bytes() > scp.limits.spool_max_bytes
    for tool in (["echoscu"], ["storescu", str(medium)]):
        proc = _dcmtk(tool[0], "-aet", "MODALITY", "-aec", "VMUNETV2", *where, *tool[1:])
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "temporary congestion" in text.lower(), text
    for path in scp.spool.glob("*.dcm"):
        path.unlink()
    assert _dcmtk("echoscu", "-aet", "MODALITY", "-aec", "VMUNETV2", *where).returncode == 0


def test_destination_down_is_retried_with_a_bounded_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A destination that is down used to get a try and a WARNING every poll (2 s). Now the waits double from the
    poll interval up to max_backoff_s; polls in between try nothing; the first success resets the count."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(listener_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: clock.now))
    attempts: list[float] = []
    down = True

    def send(datasets: list[Dataset]) -> None:
        attempts.append(clock.now)
        if down:
            raise ConnectionError("association with DEST not established")

    still = wrap_vl_endoscopic(np.full((12, 16, 3), 150, np.uint8))
    with StateDB(tmp_path / "state.sqlite") as state:
        made = Listener(Segmenter(BrightPredictor()), state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", 1),
                        settle_s=0, limits=ListenerLimits(max_backoff_s=4.0), poll_interval=1.0)
        made.send = send
        write_atomic(still, spool_path(made.spool, still))
        with caplog.at_level(logging.WARNING, logger="vmunetv2_monai.dicom.listener"):
            for now in (0.0, 0.5, 1.0, 2.0, 2.9, 3.0, 6.9, 7.0, 10.9):
                clock.now = now
                assert made.poll_once() == 0
        assert attempts == [0.0, 1.0, 3.0, 7.0]  # waits 1, 2, 4, then 4 (capped)
        waits = [r.getMessage().split("next try in ")[1] for r in caplog.records if "next try in " in r.getMessage()]
        assert waits == ["1 s", "2 s", "4 s", "4 s"], caplog.text
        down, clock.now = False, 11.0
        assert made.poll_once() == 1
        assert state.get(str(still.SOPInstanceUID)).status == DONE and made._send_failures == 0
