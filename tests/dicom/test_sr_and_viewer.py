"""Issue 25, point 6: results a viewer and a report use. A TID 1500 SR beside each SEG (area or volume, pixel count,
bounding box, references to the SEG and the sources), valid for dciodvfy and read back by highdicom; and every SEG
decoded by dcmjs (what OHIF's SEG loading builds on), painted on its source images by dcmjs' Cornerstone adapter."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.dicom.algorithm import AlgorithmInfo
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.local import segment_files
from vmunetv2_monai.dicom.seg import SEG_SOP_CLASS_UID, seg_mask_for_source, seg_uid_for
from vmunetv2_monai.dicom.sr import CODING_SCHEME, SR_SOP_CLASS_UID, read_report_back, slice_spacing, sr_uid_for
from vmunetv2_monai.dicom.units import Segmenter

from .conftest import assert_valid_dicom, ct_series, dcmjs_decode, kvasir_image_paths, load_rgb, wrap_vl_endoscopic

SEGMENTATION_REFERENCES = ("121214", "121191")  # Referenced Segmentation Frame / Referenced Segment
SOURCE_FOR_SEGMENTATION = "121233"  # Source image for segmentation


def _sc_copy(spacing: list[float] | None) -> pydicom.Dataset:
    """pydicom's SC_rgb.dcm (100x100 RGB secondary capture, PixelSpacing 1\\1) with new UIDs and ``spacing``."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if spacing is None:
        del ds.PixelSpacing
    else:
        ds.PixelSpacing = spacing
    return ds


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, predictor: Predictor) -> dict:
    """``--files`` on two Kvasir stills (no pixel spacing), a secondary capture with spacing 0.5\\0.25, one with
    ``0\\0`` (unknown), a single CT slice and a 4-slice CT series: the files written and the sources by SEG."""
    tmp = tmp_path_factory.mktemp("sr")
    stills = [wrap_vl_endoscopic(load_rgb(p)) for p in kvasir_image_paths(2)]
    series = ct_series(4)
    for ds in series:
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    (single,) = ct_series(1)
    single.WindowCenter, single.WindowWidth = 40.0, 400.0
    stills += [_sc_copy([0.5, 0.25]), _sc_copy([0.0, 0.0]), single]
    paths = [write_atomic(ds, tmp / "in" / f"still{i}.dcm") for i, ds in enumerate(stills)]
    paths += [write_atomic(ds, tmp / "in" / f"ct{i}.dcm") for i, ds in enumerate(reversed(series))]
    out = tmp / "out"
    summary = segment_files(paths, out, Segmenter(predictor))
    assert not summary.failed and len(summary.stored) == len(paths)
    algorithm = AlgorithmInfo()
    sources = {seg_uid_for(str(ds.SOPInstanceUID), algorithm): [ds] for ds in stills}
    sources[seg_uid_for([str(ds.SOPInstanceUID) for ds in series], algorithm)] = series  # ct_series: sorted
    return {"out": out, "paths": paths, "sources": sources, "files": sorted(out.iterdir()),
            "unknown": {str(stills[i].SOPInstanceUID) for i in (0, 1, 3)}}


def _content_items(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item under ``item`` (depth first)."""
    out = []
    for child in item.get("ContentSequence", []):
        out += [child, *_content_items(child)]
    return out


def _references(sr: pydicom.Dataset, concepts: tuple[str, ...]) -> list[str]:
    """ReferencedSOPInstanceUIDs of the IMAGE items named by one of ``concepts``."""
    return [str(ref.ReferencedSOPInstanceUID) for item in _content_items(sr) if item.ValueType == "IMAGE"
            and item.ConceptNameCodeSequence[0].CodeValue in concepts for ref in item.ReferencedSOPSequence]


def _expected(mask: np.ndarray, sources: list[pydicom.Dataset], unknown: bool) -> dict[str, float]:
    """Measurement name -> value the SR should hold for ``(N, H, W)`` masks of ``sources``."""
    count = int(mask.sum())
    volumetric = len(sources) > 1
    out: dict[str, float] = {"Segmented voxel count" if volumetric else "Segmented pixel count": count}
    if not unknown:
        row, column = (float(v) for v in sources[0].PixelSpacing)
        if volumetric:
            out["Volume"] = count * row * column * slice_spacing(sources)
        else:
            out["Area"] = count * row * column
    if count:
        frames, rows, columns = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
        out.update({"Bounding box first row": rows[0] + 1, "Bounding box last row": rows[-1] + 1,
                    "Bounding box first column": columns[0] + 1, "Bounding box last column": columns[-1] + 1})
        if volumetric:
            out.update({"Bounding box first frame": frames[0] + 1, "Bounding box last frame": frames[-1] + 1})
    return out


def test_an_sr_beside_each_seg_with_its_measurements(written: dict) -> None:
    files = written["files"]
    assert_valid_dicom(files)  # SEGs and SRs: 0 dciodvfy errors; SEGs decoded by dcmjs as pydicom reads them
    by_class: dict[str, list[pydicom.Dataset]] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    assert set(by_class) == {SEG_SOP_CLASS_UID, SR_SOP_CLASS_UID}
    segs = {str(ds.SOPInstanceUID): ds for ds in by_class[SEG_SOP_CLASS_UID]}
    assert set(segs) == set(written["sources"]) and len(by_class[SR_SOP_CLASS_UID]) == len(segs)
    areas = volumes = 0
    for sr_ds in by_class[SR_SOP_CLASS_UID]:
        (seg_uid,) = set(_references(sr_ds, SEGMENTATION_REFERENCES))
        seg, sources = hd.seg.Segmentation.from_dataset(segs[seg_uid]), written["sources"][seg_uid]
        uids = [str(ds.SOPInstanceUID) for ds in sources]
        assert sr_ds.SOPInstanceUID == sr_uid_for(uids, AlgorithmInfo())
        assert sorted(_references(sr_ds, (SOURCE_FOR_SEGMENTATION,))) == sorted(uids)
        evidence = {str(i.ReferencedSOPInstanceUID) for study in sr_ds.CurrentRequestedProcedureEvidenceSequence
                    for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert evidence == {seg_uid, *uids}
        assert (sr_ds.PatientID, sr_ds.StudyInstanceUID) == (seg.PatientID, seg.StudyInstanceUID)
        assert sr_ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == CODING_SCHEME
        assert sr_ds.CompletionFlag == "COMPLETE" and sr_ds.Manufacturer == "vmunetv2-monai"

        sr = read_report_back(sr_ds)
        planar = sr.content.get_planar_roi_measurement_groups()
        volumetric = sr.content.get_volumetric_roi_measurement_groups()
        assert len(planar) + len(volumetric) == 1 and bool(volumetric) == (len(sources) > 1)
        group = (planar or volumetric)[0]
        assert group.finding_type.meaning == "Polyp"
        got = {m.name.meaning: m.value for m in group.get_measurements()}
        units = {m.name.meaning: m.unit.value for m in group.get_measurements()}
        frame_uids = [str(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                      for g in seg.PerFrameFunctionalGroupsSequence]
        assert sorted(frame_uids) == sorted(uids)
        mask = np.stack([seg_mask_for_source(seg, uid) for uid in frame_uids])  # SEG frame order
        unknown = uids[0] in written["unknown"]
        expected = _expected(mask, sources, unknown)
        assert got.keys() == expected.keys(), (uids[0], got)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-6), (name, uids[0])
        if "Area" in got:
            areas += 1
            assert units["Area"] == "mm2"
        if "Volume" in got:
            volumes += 1
            assert units["Volume"] == "mm3"
        assert ("Area" not in got and "Volume" not in got) == unknown  # the documented rule
    assert (areas, volumes) == (2, 1)  # the secondary capture with spacing, the single CT slice; the series
    assert any(v > 0 for ds in by_class[SR_SOP_CLASS_UID] for v in [len(_references(ds, ("121214",)))])


def test_a_rerun_writes_the_same_objects_once(written: dict, predictor: Predictor) -> None:
    before = {p.name: p.read_bytes()[128:140] for p in written["files"]}
    summary = segment_files(written["paths"], written["out"], Segmenter(predictor))
    assert not summary.failed
    assert sorted(p.name for p in written["out"].iterdir()) == sorted(before)  # same UIDs: replaced, not added


def test_no_sr_option(tmp_path: Path, predictor: Predictor) -> None:
    from vmunetv2_monai.dicom.cli import build_parser

    assert build_parser().parse_args(["--no-sr"]).no_sr and not build_parser().parse_args([]).no_sr
    still = write_atomic(_sc_copy([1.0, 1.0]), tmp_path / "in" / "sc.dcm")
    summary = segment_files([still], tmp_path / "out", Segmenter(predictor, report=False))
    assert not summary.failed
    (only,) = (tmp_path / "out").iterdir()
    assert str(pydicom.dcmread(only).SOPClassUID) == SEG_SOP_CLASS_UID


def test_dcmjs_paints_every_seg_on_its_sources(written: dict) -> None:
    """dcmjs reads each SEG (segments, frames, references) and its Cornerstone adapter paints on each source image
    exactly the pixels highdicom reads for it."""
    segs = [p for p in written["files"] if str(pydicom.dcmread(p).SOPClassUID) == SEG_SOP_CLASS_UID]
    sources = {str(p): written["sources"][p.stem] for p in segs}
    decoded = dcmjs_decode(segs, sources)
    painted = 0
    for path, got in zip(segs, decoded, strict=True):
        seg = hd.seg.segread(path)
        uids = [str(ds.SOPInstanceUID) for ds in sources[str(path)]]
        assert got["segments"] == [{"number": 1, "label": "polyp"}]
        assert got["frames"] == len(uids) and sorted(got["frameSourceUIDs"]) == sorted(uids)
        assert sorted(got["referencedInstanceUIDs"]) == sorted(uids)
        for uid in uids:
            expected = int(seg_mask_for_source(seg, uid).sum())
            assert got["viewer"]["imageForeground"][uid] == expected, (path.name, uid)
            assert got["viewer"]["segmentsOnImage"][uid] == ([1] if expected else [])
            painted += expected > 0
    assert painted >= 3  # the masks are not all empty, so the comparison means something


def test_dcmjs_check_fails_on_a_seg_it_cannot_decode(written: dict, tmp_path: Path) -> None:
    seg = next(p for p in written["files"] if str(pydicom.dcmread(p).SOPClassUID) == SEG_SOP_CLASS_UID)
    ds = pydicom.dcmread(seg)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # frames cut short
    broken = write_atomic(ds, tmp_path / "broken.dcm")
    with pytest.raises(AssertionError, match="dcmjs could not decode"):
        dcmjs_decode([broken])


@pytest.mark.parametrize("accepts_sr", [True, False])
@pytest.mark.slow  # starts a DIMSE listener and a destination server
def test_listener_sends_the_sr_once_before_the_seg(tmp_path: Path, predictor: Predictor, accepts_sr: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """DIMSE: the SR goes to the destination on the SEG's association, before it; the same image sent again after
    it was done sends nothing. A destination that does not accept Comprehensive 3D SR still gets the SEG (the SR
    is skipped with a WARNING)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    from tests._servers import free_port
    from vmunetv2_monai.dicom.dimse import RemoteAE
    from vmunetv2_monai.dicom.listener import Listener
    from vmunetv2_monai.dicom.spool import spool_path
    from vmunetv2_monai.dicom.state import DONE, StateDB

    received: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    port = free_port()
    dest = AE(ae_title="DEST")
    dest.add_supported_context(SegmentationStorage)
    if accepts_sr:
        dest.add_supported_context(Comprehensive3DSRStorage)
    server = dest.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    still = _sc_copy([0.5, 0.5])
    try:
        with StateDB(tmp_path / "state.sqlite") as state:
            listener = Listener(Segmenter(predictor), state, tmp_path / "spool", RemoteAE("DEST", "127.0.0.1", port),
                                settle_s=0)
            write_atomic(still, spool_path(listener.spool, still))
            assert listener.poll_once() == 1
            assert state.get(str(still.SOPInstanceUID)).status == DONE
            write_atomic(still, spool_path(listener.spool, still))  # sent again by the modality
            assert listener.poll_once() == 0
    finally:
        server.shutdown()
    uids = [str(still.SOPInstanceUID)]
    expected = ([sr_uid_for(uids, AlgorithmInfo())] if accepts_sr else []) + [seg_uid_for(uids, AlgorithmInfo())]
    assert [str(ds.SOPInstanceUID) for ds in received] == expected
    if accepts_sr:
        got = {m.name.meaning: m.value for m in
               read_report_back(received[0]).content.get_planar_roi_measurement_groups()[0].get_measurements()}
        assert got["Area"] == pytest.approx(got["Segmented pixel count"] * 0.25)
    else:
        assert "does not accept Comprehensive 3D SR Storage" in caplog.text


def test_an_old_style_study_date_is_left_empty_in_seg_and_sr(tmp_path: Path, predictor: Predictor) -> None:
    """pydicom's ExplVR_BigEnd.dcm has StudyDate ``1997.04.24`` and StudyTime ``14:04:38`` (old ACR-NEMA forms,
    which pydicom parses but DICOM's DA / TM do not allow): its SEG, and the SR that copies the SEG's study
    attributes, had dciodvfy errors, and with --overlay highdicom refused the overlay's time, so the image got no
    SEG. Now both are left empty (type 2) and SEG, overlay and SR pass."""
    source = pydicom.dcmread(get_testdata_file("ExplVR_BigEnd.dcm"))
    assert source.StudyDate == "1997.04.24"  # the premise
    summary = segment_files([get_testdata_file("ExplVR_BigEnd.dcm")], tmp_path / "out",
                            Segmenter(predictor, overlay=True))  # the overlay refused its StudyTime 14:04:38
    assert not summary.failed
    written = sorted((tmp_path / "out").iterdir())
    assert sorted(pydicom.dcmread(p).Modality for p in written) == ["OT", "SEG", "SR"]
    assert all(pydicom.dcmread(p).StudyDate == "" for p in written)
    assert_valid_dicom(written)
