"""DICOM reading (RGB, YBR, greyscale, refusals), SEG writing and read-back, orientation, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import UID, generate_uid

from vmunetv2_monai.dicom.algorithm import MANUFACTURER, AlgorithmInfo
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.reader import UnsupportedDicomError, load_image, to_model_input
from vmunetv2_monai.dicom.seg import build_overlay, build_segmentation, seg_mask_for_source, seg_uid_for
from vmunetv2_monai.inference import Predictor

from .conftest import REPO, kvasir_image_paths, load_rgb, ultrasound_files, wrap_vl_endoscopic


@pytest.fixture(scope="module")
def kvasir_rgb() -> np.ndarray:
    return load_rgb(kvasir_image_paths(1)[0])


def _greyscale(values: np.ndarray, photometric: str, slope: float = 1.0, intercept: float = 0.0) -> pydicom.Dataset:
    ds = wrap_vl_endoscopic(np.zeros((*values.shape, 3), np.uint8))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    del ds.PlanarConfiguration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = values.astype(np.uint16).tobytes()
    return ds


def test_rgb_matches_bundle_scaling(kvasir_rgb: np.ndarray) -> None:
    image = to_model_input(wrap_vl_endoscopic(kvasir_rgb))
    np.testing.assert_array_equal(image, Predictor.scale_rgb_uint8(kvasir_rgb))


def test_ybr_full_is_converted_to_rgb(kvasir_rgb: np.ndarray) -> None:
    ds = wrap_vl_endoscopic(kvasir_rgb)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = convert_color_space(kvasir_rgb, "RGB", "YBR_FULL").tobytes()
    diff = np.abs(to_model_input(ds) - Predictor.scale_rgb_uint8(kvasir_rgb)).max()
    assert diff <= 3 / 255, diff  # colour-space round trip rounding only


def test_greyscale_rescale_and_monochrome1() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(20, 30))
    mono2 = to_model_input(_greyscale(values, "MONOCHROME2", slope=2.0, intercept=-1024.0))
    assert mono2.shape == (3, 20, 30) and np.allclose(mono2[0], mono2[1])
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(mono2[0], expected, atol=1e-6)
    mono1 = to_model_input(_greyscale(values, "MONOCHROME1", slope=2.0, intercept=-1024.0))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)  # MONOCHROME1: high values are dark
    negative = to_model_input(_greyscale(values, "MONOCHROME2", slope=-1.0))
    np.testing.assert_allclose(negative, 1.0 - mono2, atol=1e-6)  # the rescale slope is applied


def test_real_ultrasound_rgb_and_jpeg2000() -> None:
    files = ultrasound_files()
    unc = load_image(files["US1_UNCR.dcm"])
    j2k = load_image(files["US1_J2KR.dcm"])  # lossless JPEG 2000, YBR_RCT
    assert unc.image.shape == (3, 480, 640)
    np.testing.assert_array_equal(unc.image, j2k.image)


def test_refusals_name_the_file_and_instance(tmp_path: Path, kvasir_rgb: np.ndarray) -> None:
    from pydicom.data import get_testdata_file

    multi = get_testdata_file("SC_rgb_2frame.dcm")
    with pytest.raises(UnsupportedDicomError, match="multi-frame") as err:
        load_image(multi)
    assert multi in str(err.value) and "SOPInstanceUID" in str(err.value)

    no_pixels = wrap_vl_endoscopic(kvasir_rgb)
    del no_pixels.PixelData
    path = write_atomic(no_pixels, tmp_path / "nopix.dcm")
    with pytest.raises(UnsupportedDicomError, match="missing pixel data") as err:
        load_image(path)
    assert str(no_pixels.SOPInstanceUID) in str(err.value)

    mpeg = wrap_vl_endoscopic(kvasir_rgb)
    mpeg.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 MP@ML
    mpeg.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    mpeg["PixelData"].VR = "OB"
    path = write_atomic(mpeg, tmp_path / "mpeg.dcm")
    with pytest.raises(UnsupportedDicomError, match="unsupported transfer syntax .*MPEG2"):
        load_image(path)

    whole = write_atomic(wrap_vl_endoscopic(kvasir_rgb), tmp_path / "whole.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole[: len(whole) - 1000])
    with pytest.raises(UnsupportedDicomError, match="truncated|not a readable") as err:
        load_image(truncated)
    assert str(truncated) in str(err.value)

    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all")
    with pytest.raises(UnsupportedDicomError, match="not a readable DICOM file"):
        load_image(garbage)


def test_seg_round_trip_and_metadata(tmp_path: Path, kvasir_rgb: np.ndarray, predictor: Predictor) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text(json.dumps({
        "name": "Test bundle", "version": "9.8.7",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "polyp"}}}}}))
    algo = AlgorithmInfo.from_bundle(bundle)
    assert (algo.name, algo.version, algo.segment_label) == ("Test bundle", "9.8.7", "polyp")

    source = wrap_vl_endoscopic(kvasir_rgb)
    image = load_image(source)
    mask = predictor.predict(image.image)
    assert 0 < mask.mean() < 1, "tiny test network should give a non-trivial mask"
    seg = build_segmentation(source, mask, algo)
    path = write_atomic(seg, tmp_path / "seg.dcm")
    back = hd.seg.segread(path)
    assert back.SOPInstanceUID == seg_uid_for(source.SOPInstanceUID, algo)
    assert back.SegmentationType == "BINARY" and back.Manufacturer == MANUFACTURER
    assert (str(source.StudyInstanceUID), str(source.SeriesInstanceUID), str(source.SOPInstanceUID)) in [
        tuple(map(str, t)) for t in back.get_source_image_uids()]
    desc = back.get_segment_description(1)
    assert desc.segment_label == "polyp"
    assert desc.algorithm_identification[0].AlgorithmName == "Test bundle"
    assert desc.algorithm_identification[0].AlgorithmVersion == "9.8.7"
    np.testing.assert_array_equal(seg_mask_for_source(back, str(source.SOPInstanceUID)), mask)

    overlay = build_overlay(source, image.display_rgb(), mask, algo)
    assert overlay.Manufacturer == MANUFACTURER and overlay.pixel_array.shape == (*mask.shape, 3)


def test_real_bundle_metadata_is_used_when_present() -> None:
    meta = REPO / "bundle" / "configs" / "metadata.json"
    if not meta.is_file():
        pytest.skip("bundle/configs/metadata.json not in this checkout")
    algo = AlgorithmInfo.from_bundle(REPO / "bundle")
    data = json.loads(meta.read_text())
    assert (algo.name, algo.version) == (data["name"], data["version"])


def test_orientation_dicom_equals_png(tmp_path: Path, kvasir_rgb: np.ndarray, predictor: Predictor) -> None:
    """One rule: (H, W) = (Rows, Columns) everywhere. The DICOM path equals the PNG path pixel for pixel;
    MONAI's PILReader gives the transpose (W, H), which we never use for DICOM."""
    from monai.transforms import LoadImage
    from PIL import Image

    assert kvasir_rgb.shape[0] != kvasir_rgb.shape[1]
    png = tmp_path / "img.png"
    Image.fromarray(kvasir_rgb).save(png)
    png_rgb = np.asarray(Image.open(png).convert("RGB"))
    via_dicom = load_image(write_atomic(wrap_vl_endoscopic(kvasir_rgb), tmp_path / "img.dcm"))
    np.testing.assert_array_equal(via_dicom.image, Predictor.scale_rgb_uint8(png_rgb))
    monai_arr = np.asarray(LoadImage(image_only=True, reader="PILReader")(str(png)))
    np.testing.assert_array_equal(np.transpose(monai_arr, (1, 0, 2)), png_rgb)
    np.testing.assert_array_equal(predictor.predict(via_dicom.image), predictor.predict(
        Predictor.scale_rgb_uint8(png_rgb)))
    seg = build_segmentation(via_dicom.dataset, predictor.predict(via_dicom.image), AlgorithmInfo())
    assert (seg.Rows, seg.Columns) == kvasir_rgb.shape[:2]


def test_write_atomic_leaves_no_partial_file(tmp_path: Path, kvasir_rgb: np.ndarray,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ds = wrap_vl_endoscopic(kvasir_rgb)
    target = write_atomic(ds, tmp_path / "out.dcm")
    before = target.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    other = wrap_vl_endoscopic(kvasir_rgb)
    monkeypatch.setattr(type(other), "save_as", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(other, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.dcm"]
    assert pydicom.dcmread(target).SOPInstanceUID == ds.SOPInstanceUID and generate_uid()


def test_local_files_mode_with_overlay(tmp_path: Path, kvasir_rgb: np.ndarray, tiny_checkpoint: Path,
                                       network_json: str, predictor: Predictor) -> None:
    from vmunetv2_monai.dicom.pipeline import main

    good = write_atomic(wrap_vl_endoscopic(kvasir_rgb), tmp_path / "in" / "good.dcm")
    bad = tmp_path / "in" / "bad.dcm"
    bad.write_bytes(good.read_bytes()[:-500])
    out = tmp_path / "out"
    rc = main(["--files", str(bad), str(good), "--output-dir", str(out), "--overlay", "--checkpoint",
               str(tiny_checkpoint), "--network-json", network_json, "--log-level", "WARNING"])
    assert rc == 1  # the truncated file is reported; the good one is still segmented
    written = {pydicom.dcmread(p).SOPClassUID.name: p for p in out.iterdir()}
    assert set(written) == {"Segmentation Storage", "Secondary Capture Image Storage"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    source = pydicom.dcmread(good)
    seg = hd.seg.segread(written["Segmentation Storage"])
    np.testing.assert_array_equal(seg_mask_for_source(seg, str(source.SOPInstanceUID)),
                                  predictor.predict(load_image(source).image))


def test_cli_bundle_overrides_set_network_and_inference_mode(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--bundle-overrides (a recipe's overrides.json) reaches the predictor; a bad file is named."""
    from vmunetv2_monai.dicom.pipeline import _predictor, build_parser
    from vmunetv2_monai.inferers import ResizeInferer

    from .conftest import TINY_NET

    overrides = tmp_path / "overrides.json"
    net = {k: v for k, v in TINY_NET.items() if k not in ("spatial_dims", "in_channels", "out_channels")}
    overrides.write_text(json.dumps({**net, "inference_mode": "resize", "image_size": [64, 64]}))
    base = ["--bundle-dir", str(REPO / "bundle"), "--checkpoint", str(tiny_checkpoint)]
    pred = _predictor(build_parser().parse_args([*base, "--bundle-overrides", str(overrides)]))
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == (64, 64)
    overrides.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="overrides.json: expected a JSON object"):
        _predictor(build_parser().parse_args([*base, "--bundle-overrides", str(overrides)]))
