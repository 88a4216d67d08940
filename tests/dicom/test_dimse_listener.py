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

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from tests._servers import free_port
from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.dicom import listener as listener_module
from vmunetv2_monai.dicom.dicomweb import PacsClient
from vmunetv2_monai.dicom.dimse import ListenerLimits, RemoteAE
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.listener import Listener
from vmunetv2_monai.dicom.reader import load_image
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID, seg_mask_for_source
from vmunetv2_monai.dicom.spool import seg_instance_number, spool_path
from vmunetv2_monai.dicom.state import DONE, StateDB
from vmunetv2_monai.dicom.units import Segmenter, UnitResult
from vmunetv2_monai.dicom.voi import grey_window

from .conftest import REPO, Orthanc, assert_valid_dicom, ct_series, kvasir_image_paths, load_rgb, wrap_vl_endoscopic

pytestmark = pytest.mark.slow  # starts DIMSE listeners, Orthanc and dcmtk in subprocesses

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

    def segment(self, unit: list[Dataset], source: str, instance_number: int | None = None) -> UnitResult:
        self.calls += 1
        return super().segment(unit, source, instance_number)


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
        cmd = [sys.executable, "-m", "vmunetv2_monai.dicom.cli", "--listen", "--listen-port", str(listen_port),
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


SETTLE_S = 1.0  # --settle of the late-slice tests


@pytest.fixture
def destination() -> Iterator[tuple[RemoteAE, list[Dataset]]]:
    """A Storage SCP on 127.0.0.1 (AE DEST) that keeps every SEG and SR sent to it, with its file meta."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    dest = AE(ae_title="DEST")
    for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
        dest.add_supported_context(sop_class)
    port = free_port()
    server = dest.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield RemoteAE("DEST", "127.0.0.1", port), received
    finally:
        server.shutdown()


def _ct_files(tmp_path: Path, n: int) -> tuple[list[Dataset], list[Path]]:
    """An ``n``-slice CT series (window 40/400) written to files for storescu."""
    slices = ct_series(n)
    for ds in slices:
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    return slices, [write_atomic(ds, tmp_path / "ct" / f"ct{i}.dcm") for i, ds in enumerate(slices)]


def _storescu(listener: Listener, *paths: Path) -> None:
    proc = _dcmtk("storescu", "-aec", listener.ae_title, "127.0.0.1", str(listener.port), *map(str, paths))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _settled_poll(listener: Listener) -> int:
    """poll_once once the newest spool file is older than the listener's settle time."""
    time.sleep(SETTLE_S + 0.1)
    return listener.poll_once()


def _new_segs(received: list[Dataset], seen: int) -> list[Dataset]:
    return [ds for ds in received[seen:] if ds.SOPClassUID == SEG_SOP_CLASS_UID]


def _expected_masks(slices: list[Dataset]) -> dict[str, np.ndarray]:
    window = grey_window(slices[0])
    return {str(ds.SOPInstanceUID): BrightPredictor().predict(load_image(ds, window=window).image) for ds in slices}


def _check_seg(seg_ds: Dataset, slices: list[Dataset], tmp_path: Path) -> hd.seg.Segmentation:
    """One frame per slice of ``slices``, referencing exactly them, masks == the predictor's, dciodvfy-clean."""
    assert_valid_dicom([write_atomic(seg_ds, tmp_path / "segs" / f"{seg_ds.SOPInstanceUID}.dcm")])
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.NumberOfFrames == len(slices)
    assert sorted(str(t[2]) for t in seg.get_source_image_uids()) == sorted(str(ds.SOPInstanceUID) for ds in slices)
    for uid, mask in _expected_masks(slices).items():
        np.testing.assert_array_equal(seg_mask_for_source(seg, uid), mask, err_msg=uid)
    return seg


def test_late_slice_gets_a_new_seg_of_the_whole_series(tmp_path: Path, destination: tuple[RemoteAE, list[Dataset]],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Issue 25, point 4: a CT slice sent by storescu after its series' SEG was made used to get a SEG of itself
    only. Now the series' slices are kept (--keep-series), and the late slice gets a new SEG of all four slices, in
    the same SEG series, that supersedes the first (the log says so) and has a higher Instance Number (2 after 1);
    a slice sent again gets nothing new."""
    dest, received = destination
    slices, files = _ct_files(tmp_path, 4)
    segmenter = Segmenter(BrightPredictor())
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(segmenter, state, tmp_path / "spool", dest, port=free_port(), settle_s=SETTLE_S,
                            limits=ListenerLimits(keep_series_s=3600.0), poll_interval=1.0)
        listener.start()
        try:
            _storescu(listener, *files[:3])
            assert _settled_poll(listener) == 3
            (first,) = _new_segs(received, 0)
            _check_seg(first, slices[:3], tmp_path)
            kept = listener.spool / "kept" / str(slices[0].SeriesInstanceUID)
            assert sorted(p.name for p in kept.iterdir()) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in slices[:3])

            seen = len(received)
            _storescu(listener, files[3])
            assert listener.poll_once() == 0  # within --settle of its arrival: waits
            with caplog.at_level(logging.INFO, logger="vmunetv2_monai.dicom"):
                assert _settled_poll(listener) == 1
            (second,) = _new_segs(received, seen)
            seg = _check_seg(second, slices, tmp_path)
            uids = [str(ds.SOPInstanceUID) for ds in slices]
            assert seg.SOPInstanceUID == segmenter.seg_uid(uids) != first.SOPInstanceUID
            assert second.SeriesInstanceUID == first.SeriesInstanceUID
            # viewers sort the SEGs of one series by Instance Number: the superseding one comes after the first
            assert (int(first.InstanceNumber), int(second.InstanceNumber)) == (1, 2)
            series_uid = str(slices[0].SeriesInstanceUID)
            assert state.seg_instance_numbers(series_uid) == {str(first.SOPInstanceUID): 1, seg.SOPInstanceUID: 2}
            # from the state file alone, as after a restart
            assert seg_instance_number(state, segmenter, slices, {str(first.SOPInstanceUID)}) == 2
            assert seg_instance_number(state, segmenter, slices[:2], set()) == 3  # a next one: one higher
            warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(str(slices[0].SeriesInstanceUID) in m and str(first.SOPInstanceUID) in m and "supersedes" in m
                       for m in warning), caplog.text
            assert all(state.get(u).status == DONE and state.get(u).seg_sop_instance_uid == seg.SOPInstanceUID
                       for u in uids)
            assert len(list(kept.iterdir())) == 4 and not list(listener.spool.glob("*.dcm"))

            seen = len(received)
            _storescu(listener, files[1])  # sent again: already done
            assert _settled_poll(listener) == 0
            assert not _new_segs(received, seen) and not list(listener.spool.glob("*.dcm"))
        finally:
            listener.shutdown()


@pytest.mark.parametrize("keep_s", [0.0, 2.0])
def test_late_slice_after_the_retention_gets_a_seg_of_its_own(tmp_path: Path, keep_s: float,
                                                              destination: tuple[RemoteAE, list[Dataset]],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The documented rule when the series is no longer kept (--keep-series 0, or its retention has passed): the
    late slice gets a SEG of itself only, and a WARNING names the series and the earlier SEG."""
    dest, received = destination
    slices, files = _ct_files(tmp_path, 4)
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(Segmenter(BrightPredictor()), state, tmp_path / "spool", dest, port=free_port(),
                            settle_s=SETTLE_S, limits=ListenerLimits(keep_series_s=keep_s), poll_interval=1.0)
        listener.start()
        try:
            _storescu(listener, *files[:3])
            assert _settled_poll(listener) == 3
            (first,) = _new_segs(received, 0)
            kept = listener.spool / "kept" / str(slices[0].SeriesInstanceUID)
            assert kept.is_dir() == (keep_s > 0)
            with caplog.at_level(logging.INFO, logger="vmunetv2_monai.dicom"):
                if keep_s > 0:
                    time.sleep(keep_s + 0.1)
                    assert listener.poll_once() == 0
                    assert not kept.exists() and "kept slice(s) removed" in caplog.text
                seen = len(received)
                _storescu(listener, files[3])
                assert _settled_poll(listener) == 1
            (late,) = _new_segs(received, seen)
            _check_seg(late, slices[3:], tmp_path)
            assert late.SeriesInstanceUID == first.SeriesInstanceUID
            assert (int(first.InstanceNumber), int(late.InstanceNumber)) == (1, 2)  # sorted after the first
            warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any(str(slices[0].SeriesInstanceUID) in m and str(first.SOPInstanceUID) in m
                       and "late instance(s) only" in m for m in warning), caplog.text
            assert not list(listener.spool.glob("*.dcm"))
        finally:
            listener.shutdown()


def test_another_geometry_of_a_kept_series_is_not_merged(tmp_path: Path, destination: tuple[RemoteAE, list[Dataset]],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A slice of the same series with another orientation (a localizer) arriving after the series' SEG, while the
    series is kept: its own one-frame SEG; the kept slices are not put into it and no SEG is said to supersede."""
    dest, received = destination
    slices, files = _ct_files(tmp_path, 4)
    localizer = slices[3]
    localizer.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    files[3] = write_atomic(localizer, files[3])
    with StateDB(tmp_path / "state.sqlite") as state:
        listener = Listener(Segmenter(BrightPredictor()), state, tmp_path / "spool", dest, port=free_port(),
                            settle_s=SETTLE_S, limits=ListenerLimits(keep_series_s=3600.0), poll_interval=1.0)
        listener.start()
        try:
            _storescu(listener, *files[:3])
            assert _settled_poll(listener) == 3
            seen = len(received)
            _storescu(listener, files[3])
            with caplog.at_level(logging.INFO, logger="vmunetv2_monai.dicom"):
                assert _settled_poll(listener) == 1
            (seg,) = _new_segs(received, seen)
            _check_seg(seg, [localizer], tmp_path)
            assert "supersedes" not in caplog.text
            assert len(list((listener.spool / "kept" / str(localizer.SeriesInstanceUID)).iterdir())) == 4
        finally:
            listener.shutdown()
