"""Fixtures for the DICOM tests: a tiny checkpoint, Kvasir images wrapped as VL Endoscopic DICOM, real
ultrasound files from pydicom-data, and a real Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests._servers import free_port, wait_until_serving
from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.bundle.predictor import Predictor

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
TINY_NET = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "depths": (1, 1, 1, 1), "dims": 16,
            "d_state": 8, "mid_channels": 8,  # d_state 8: the compiled CPU scan kernel (4 falls back to torch)
            "keep_unused_stage": True}  # over the bundle's false: --network-json changes only what it names
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
ORTHANC_START_TIMEOUT_S = 30.0


def kvasir_image_paths(n: int) -> list[Path]:
    """``n`` Kvasir images: tests/data first, else $VMUNETV2_KVASIR_DIR, else ../shared/data/kvasir-seg."""
    candidates = [REPO / "tests" / "data"]
    if os.environ.get("VMUNETV2_KVASIR_DIR"):
        candidates.append(Path(os.environ["VMUNETV2_KVASIR_DIR"]))
    candidates.append(REPO.parent / "shared" / "data" / "kvasir-seg")
    for root in candidates:
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png")
                       and "mask" not in str(p.relative_to(root)).lower())
        if len(found) >= n:
            return found[:n]
    pytest.fail(f"need {n} Kvasir images in one of {candidates}")


def load_rgb(path: Path, size: tuple[int, int] = (88, 72)) -> np.ndarray:
    """An RGB image downsized to ``size`` = (W, H): ``(H, W, 3)`` uint8; non-square on purpose."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.uint8)


def rgb_input(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 on the 8-bit scale: what the bundle loads from a PNG, rows first."""
    return np.moveaxis(rgb, -1, 0).astype(np.float32)


def wrap_vl_endoscopic(rgb: np.ndarray, patient_id: str = "KVASIR1", study_uid: str | None = None) -> Dataset:
    """A complete single-frame VL Endoscopic Image (RGB, explicit VR little endian) around ``(H, W, 3)`` pixels."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_ENDOSCOPIC
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_ENDOSCOPIC, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Kvasir^Test", patient_id, "", "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20240101", "120000", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ES", 1, 1
    ds.Manufacturer = "test-wrapper"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = "20240101120000"
    ds.LossyImageCompression = "01"  # Kvasir images are JPEGs
    ds.LossyImageCompressionRatio, ds.LossyImageCompressionMethod = 10.0, "ISO_10918_1"
    ds.PatientOrientation = ""
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "71854001", "SCT", "Colon"
    ds.AnatomicRegionSequence = [region]
    ds.AcquisitionContextSequence = []
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # a real Part 10 file: preamble and complete file meta
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def ct_series(n: int, study_uid: str | None = None) -> list[Dataset]:
    """A real ``n``-slice CT series: pydicom's CT_small.dcm (128x128, signed 16-bit) repeated along the slice
    normal at its slice thickness, with new instance UIDs, one series and frame of reference."""
    from pydicom.data import get_testdata_file

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study, series, frame = study_uid or generate_uid(), generate_uid(), generate_uid()
    iop = np.asarray(base.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.asarray(base.ImagePositionPatient, dtype=float)
    step = float(base.SliceThickness)
    rng = np.random.default_rng(1)
    slices = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [round(float(v), 3) for v in origin + i * step * normal]
        ds.SliceLocation = round(float(ds.ImagePositionPatient[2]), 3)
        pixels = ds.pixel_array.astype(np.int16)
        noise = rng.integers(-20, 21, size=pixels.shape).astype(np.int16)  # slices differ, same intensity range
        ds.PixelData = np.clip(pixels + noise, -2000, 3000).astype(np.int16).tobytes()
        slices.append(ds)
    return slices


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny VM-UNetV2 (seed 0) saved as a raw state dict.

    The final bias is shifted so that the median logit on a Kvasir image is 0: the masks then have both
    foreground and background, so mask comparisons mean something.
    """
    torch.manual_seed(0)
    net = VMUNetV2(**TINY_NET)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(net.state_dict(), path)
    logits = Predictor.from_checkpoint(path, TINY_NET).logits(rgb_input(load_rgb(kvasir_image_paths(1)[0])))
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    biases = [m for m in net.modules() if isinstance(m, convs) and m.bias is not None]
    with torch.no_grad():
        biases[-1].bias -= float(np.median(logits))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint: Path) -> Predictor:
    """The direct-inference reference, from the same checkpoint the pipeline loads."""
    return Predictor.from_checkpoint(tiny_checkpoint, TINY_NET)


@pytest.fixture(scope="session")
def network_json() -> str:
    """TINY_NET as the pipeline's --network-json."""
    return json.dumps(TINY_NET)


def ultrasound_files() -> dict[str, Path]:
    """Real RGB ultrasound DICOM files from pydicom-data (via pydicom's test-file lookup)."""
    from pydicom.data import get_testdata_file

    out = {}
    for name in ("US1_UNCR.dcm", "US1_J2KR.dcm"):
        path = get_testdata_file(name)
        if path is None:
            pytest.fail(f"{name} not found: pip install pydicom-data")
        out[name] = Path(path)
    return out


def _find_plugin() -> Path:
    env = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    dirs = [Path(env)] if env else []
    dirs += [Path(d) / "libOrthancDicomWeb.so" for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins",
                                                           "/usr/local/share/orthanc/plugins")]
    for path in dirs:
        if path.is_file():
            return path
    pytest.fail("Orthanc DICOMweb plugin not found: apt-get install orthanc-dicomweb (or set ORTHANC_DICOMWEB_PLUGIN)")


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines of dicom3tools' ``dciodvfy`` on one file (Debian ``dicom3tools``; missing means fail)."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy not found: apt-get install dicom3tools")
    # errors="replace": dciodvfy echoes attribute values in their own (possibly non-UTF-8) encoding
    proc = subprocess.run([binary, str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def assert_valid_dicom(paths: list[Path]) -> None:
    """Every file passes ``dciodvfy`` without an Error line (the lines are printed on failure), and every SEG
    among them decodes with dcmjs to what pydicom reads (:func:`assert_dcmjs_matches`)."""
    bad = {str(p): errors for p in paths if (errors := dciodvfy_errors(p))}
    assert not bad, "dciodvfy errors:\n" + "\n".join(f"{p}:\n  " + "\n  ".join(e) for p, e in bad.items())
    assert_dcmjs_matches(list(paths))  # and a web viewer's library reads every SEG among them


class Orthanc:
    """An Orthanc on 127.0.0.1 with its own storage: ``url`` is its DICOMweb root, ``rest`` its REST root,
    ``dicom_port`` / ``aet`` its DICOM (DIMSE) side. It can be stopped and started again on the same ports."""

    def __init__(self, tmp_path: Path, modalities: dict[str, list] | None = None) -> None:
        self.binary = os.environ.get("ORTHANC_BIN") or shutil.which("Orthanc") or shutil.which("Orthanc",
                                                                                             path="/usr/sbin")
        if not self.binary:
            pytest.fail("Orthanc not found: apt-get install orthanc orthanc-dicomweb (or set ORTHANC_BIN)")
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), "ORTHANCTEST"
        self.rest = f"http://127.0.0.1:{self.http_port}"
        self.url = self.rest + "/dicom-web"
        storage = tmp_path / "orthanc-storage"
        storage.mkdir()
        config = {
            "Name": "vmunetv2-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomServerEnabled": True, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "DicomModalities": modalities or {}, "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "Plugins": [str(_find_plugin())], "SaveJobs": False, "OverwriteInstances": False, "WebDavEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
        }
        self.config = tmp_path / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = tmp_path / "orthanc.log"
        self.cwd = tmp_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start and wait until DICOMweb answers (fails the test after ORTHANC_START_TIMEOUT_S)."""
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=fh, stderr=subprocess.STDOUT,
                                         cwd=self.cwd)
        wait_until_serving(self.proc, self.rest + "/dicom-web/studies", self.log, ORTHANC_START_TIMEOUT_S, "Orthanc",
                           poll_s=0.2, request_timeout=2.0)

    def stop(self) -> None:
        """Terminate (kill after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc on 127.0.0.1 with free ports and its own storage; stopped after the test.

    Missing binaries make the test fail (CI installs them), they never skip.
    """
    server = Orthanc(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


JS_DIR = REPO / "tests" / "dicom" / "js"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NODE_TIMEOUT_S = 300.0


def _dcmjs_ready() -> str:
    """The ``node`` binary, with dcmjs installed in tests/dicom/js (``npm ci`` from its package-lock.json when
    node_modules is missing: setup.sh runs it; Debian ``nodejs`` + ``npm``, scripts/install_system_packages.sh)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.fail("node not found: sudo bash scripts/install_system_packages.sh (Debian nodejs and npm)")
    if not (JS_DIR / "node_modules" / "dcmjs" / "package.json").is_file():
        if npm is None:
            pytest.fail("dcmjs not installed and npm not found: sudo bash scripts/install_system_packages.sh")
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], check=False, cwd=JS_DIR,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
        assert proc.returncode == 0, f"npm ci in {JS_DIR} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return node


def source_metadata(source: Dataset) -> dict:
    """What a viewer's metadata provider knows about one source image (as DICOMweb metadata gives it)."""
    out: dict = {"imageId": f"wadors:{source.SOPInstanceUID}", "SOPInstanceUID": str(source.SOPInstanceUID),
                 "SOPClassUID": str(source.SOPClassUID), "SeriesInstanceUID": str(source.SeriesInstanceUID),
                 "Rows": int(source.Rows), "Columns": int(source.Columns)}
    for key in ("FrameOfReferenceUID",):
        if source.get(key):
            out[key] = str(source.get(key))
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if source.get(key):
            out[key] = [float(v) for v in source.get(key)]
    return out


def dcmjs_decode(segs: list[Path], sources: dict[str, list[Dataset]] | None = None) -> list[dict]:
    """Decode SEG files with dcmjs (tests/dicom/js/decode_seg.js): per SEG its segments, frames, per-frame source
    UIDs and foreground counts; with ``sources`` (SEG path -> its source datasets) also the labelmap dcmjs'
    Cornerstone adapter paints on each source (``viewer``). Fails the test when dcmjs cannot decode one."""
    node = _dcmjs_ready()
    sources = sources or {}
    with tempfile.TemporaryDirectory() as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps([{"path": str(p), "sources": [source_metadata(s) for s in sources[str(p)]]
                                        if str(p) in sources else None} for p in segs]))
        proc = subprocess.run([node, str(JS_DIR / "decode_seg.js"), str(request), str(result)], check=False,
                              capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
        decoded = json.loads(result.read_text()) if result.is_file() else []
    errors = [d for d in decoded if d.get("error")]
    assert proc.returncode == 0 and len(decoded) == len(segs) and not errors, (
        f"dcmjs could not decode (exit {proc.returncode}): {errors}\n{proc.stderr[-3000:]}")
    return decoded


def assert_dcmjs_matches(paths: list[Path]) -> None:
    """Every SEG among ``paths`` decodes with dcmjs to what pydicom reads: segments, frame count, the source
    SOP instance of each frame and the foreground pixels of each frame."""
    segs = [p for p in paths if str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) == SEG_CLASS]
    if not segs:
        return
    for path, got in zip(segs, dcmjs_decode(segs), strict=True):
        ds = pydicom.dcmread(path)
        frames = int(ds.NumberOfFrames)
        refs = [str(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                for g in ds.PerFrameFunctionalGroupsSequence]
        bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
        counts = bits[:frames * ds.Rows * ds.Columns].reshape(frames, -1).sum(axis=1).tolist()
        assert got["frames"] == frames and got["sopInstanceUID"] == str(ds.SOPInstanceUID), (path, got)
        assert [s["number"] for s in got["segments"]] == [int(s.SegmentNumber) for s in ds.SegmentSequence], path
        assert got["frameSourceUIDs"] == refs and got["frameForeground"] == counts, (path, got)
        shared = ds.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
        segments = [int((g.get("SegmentIdentificationSequence") or shared)[0].ReferencedSegmentNumber)
                    for g in ds.PerFrameFunctionalGroupsSequence]
        assert got["frameSegments"] == segments, (path, got)
