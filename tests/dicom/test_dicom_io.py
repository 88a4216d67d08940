"""DICOM reading (RGB, YBR, greyscale, refusals), SEG writing and read-back, orientation, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.uid import UID, generate_uid

from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.dicom.algorithm import MANUFACTURER, AlgorithmInfo
from vmunetv2_monai.dicom.files import write_atomic
from vmunetv2_monai.dicom.local import segment_files
from vmunetv2_monai.dicom.reader import UnsupportedDicomError, load_image, to_model_input
from vmunetv2_monai.dicom.seg import (
    SEG_SOP_CLASS_UID,
    build_overlay,
    build_segmentation,
    seg_mask_for_source,
    seg_uid_for,
)
from vmunetv2_monai.dicom.units import Segmenter
from vmunetv2_monai.dicom.voi import grey_window

from .conftest import (
    REPO,
    assert_valid_dicom,
    ct_series,
    kvasir_image_paths,
    load_rgb,
    rgb_input,
    ultrasound_files,
    wrap_vl_endoscopic,
)


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
    np.testing.assert_array_equal(image, rgb_input(kvasir_rgb))  # 8-bit values as stored, like a PNG


def test_ybr_full_is_converted_to_rgb(kvasir_rgb: np.ndarray) -> None:
    ds = wrap_vl_endoscopic(kvasir_rgb)
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.PixelData = convert_color_space(kvasir_rgb, "RGB", "YBR_FULL").tobytes()
    diff = np.abs(to_model_input(ds) - rgb_input(kvasir_rgb)).max()
    assert diff <= 3, diff  # colour-space round trip rounding only


def test_greyscale_fixed_window_and_monochrome1() -> None:
    """One modality value gives one input value whatever else is in the image (no per-slice min-max)."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(20, 30))
    narrow = values.copy()
    narrow[0, 0], narrow[1, 1] = 1000, 1100
    narrow = np.clip(narrow, 1000, 1100)  # a slice with a small range: min-max would stretch it
    configured = grey_window(_greyscale(values, "MONOCHROME2"), (2048.0, 4096.0))
    assert configured.origin == "configured"
    wide = to_model_input(_greyscale(values, "MONOCHROME2"), window=configured)
    small = to_model_input(_greyscale(narrow, "MONOCHROME2"), window=configured)
    both = narrow == values
    np.testing.assert_allclose(small[0][both], wide[0][both], atol=1e-4)
    np.testing.assert_allclose(wide[0], 255 * np.clip((values - 2047.5) / 4095 + 0.5, 0, 1), atol=1e-4)

    ds = _greyscale(values, "MONOCHROME2", slope=2.0, intercept=-1024.0)
    ds.WindowCenter, ds.WindowWidth = [40.0, 300.0], [400.0, 1500.0]  # the first window is used
    window = grey_window(ds)
    assert (window.center, window.width, window.origin) == (40.0, 400.0, "image WindowCenter/WindowWidth")
    hu = values * 2.0 - 1024.0
    mono2 = to_model_input(ds)
    np.testing.assert_allclose(mono2[0], 255 * np.clip((hu - 39.5) / 399 + 0.5, 0, 1), atol=1e-4)
    assert np.allclose(mono2[0], mono2[2])
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(to_model_input(ds), 255 - mono2, atol=1e-4)  # MONOCHROME1: high values are dark

    full = grey_window(_greyscale(values, "MONOCHROME2", slope=-1.0))  # no window: the full 12-bit range
    assert full.origin == "full 12-bit stored range" and (full.center, full.width) == (-2047.0, 4096.0)


def test_sigmoid_window_is_pydicoms() -> None:
    """Issue 22: a SIGMOID VOI LUT Function was applied as a LINEAR window. Now the input is pydicom's
    apply_voi_lut, scaled from its output range (the modality output range) to [0, 255]."""
    values = np.random.default_rng(1).integers(0, 4096, size=(20, 30))
    ds = _greyscale(values, "MONOCHROME2", slope=2.0, intercept=-1024.0)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40.0, 400.0, "SIGMOID"
    window = grey_window(ds)
    assert (window.center, window.width, window.function) == (40.0, 400.0, "SIGMOID")
    assert window.describe() == "center 40 width 400 SIGMOID (image WindowCenter/WindowWidth)"
    image = to_model_input(ds)
    y_min, y_max = -1024.0, 4095 * 2.0 - 1024.0  # unsigned 12-bit stored values through the rescale
    expected = (apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) - y_min) / (y_max - y_min)
    np.testing.assert_allclose(image[0], 255 * expected, atol=1e-3)
    linear = 255 * np.clip((values * 2.0 - 1024.0 - 39.5) / 399 + 0.5, 0, 1)
    assert np.abs(image[0] - linear).max() > 10  # not the LINEAR window of the same center and width
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(to_model_input(ds)[0], 255 * (1 - expected), atol=1e-3)


def test_voi_lut_sequence_is_pydicoms(tmp_path: Path) -> None:
    """Issue 22: a VOI LUT Sequence was ignored (the window beside it, or the full range, was used). Now its first
    item is applied by pydicom's apply_voi_lut (preferred to a window, as pydicom does), output / (2**bits - 1);
    also after a write and read (LUT Data as stored in a file)."""
    values = np.random.default_rng(2).integers(0, 4096, size=(20, 30))
    ds = _greyscale(values, "MONOCHROME2")
    item = Dataset()
    item.LUTDescriptor = [2048, 1000, 12]  # 2048 entries for stored values 1000..3047, 12 bits per entry
    lut = np.round(4095 * np.sqrt(np.linspace(0.0, 1.0, 2048))).astype("<u2")
    item.add_new("LUTData", "OW", lut.tobytes())  # as files store it (the byte order is the file's)
    item.LUTExplanation = "SQRT"
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    window = grey_window(ds)
    assert window.origin == "image VOI LUT Sequence" and window.center is None
    assert window.describe() == "VOI LUT 2048 entries from 1000, 12 bits, 'SQRT' (image VOI LUT Sequence)"
    expected = 255 * (apply_voi_lut(ds.pixel_array, ds) / (2**12 - 1))  # uint16 out
    assert expected.min() == 0 and expected.max() == 255
    np.testing.assert_allclose(to_model_input(ds)[0], expected, atol=1e-3)
    read = load_image(write_atomic(ds, tmp_path / "lut.dcm"))
    np.testing.assert_allclose(read.image[0], expected, atol=1e-3)


def test_compressed_inputs_decode_like_the_uncompressed_file() -> None:
    """RLE, JPEG-LS, JPEG 2000 (real pydicom files of MR_small) and JPEG Lossless decode (pylibjpeg plugins)."""
    from pydicom.data import get_testdata_file

    reference = load_image(get_testdata_file("MR_small.dcm")).image
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        image = load_image(get_testdata_file(name))
        assert image.dataset.file_meta.TransferSyntaxUID.is_compressed
        np.testing.assert_array_equal(image.image, reference, err_msg=name)
    jpeg_ll = load_image(get_testdata_file("JPEG-LL.dcm"))
    assert jpeg_ll.dataset.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    arr = jpeg_ll.dataset.pixel_array
    assert arr.shape == (1024, 256) and arr.std() > 0 and jpeg_ll.image.shape == (3, 1024, 256)


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
    """One rule: (H, W) = (Rows, Columns) for DICOM arrays and masks. The DICOM input equals the PNG's pixels rows
    first; MONAI's PILReader gives the transpose (W, H), the order the bundle's network sees, so the predictor
    transposes its input and mask (tests/bundle/test_predictor.py compares its masks with the bundle's own run)."""
    from monai.transforms import LoadImage
    from PIL import Image

    assert kvasir_rgb.shape[0] != kvasir_rgb.shape[1]
    png = tmp_path / "img.png"
    Image.fromarray(kvasir_rgb).save(png)
    png_rgb = np.asarray(Image.open(png).convert("RGB"))
    via_dicom = load_image(write_atomic(wrap_vl_endoscopic(kvasir_rgb), tmp_path / "img.dcm"))
    np.testing.assert_array_equal(via_dicom.image, rgb_input(png_rgb))
    monai_arr = np.asarray(LoadImage(image_only=True, reader="PILReader")(str(png)))
    np.testing.assert_array_equal(np.transpose(monai_arr, (1, 0, 2)), png_rgb)
    mask = predictor.predict(via_dicom.image)
    assert mask.shape == kvasir_rgb.shape[:2]
    seg = build_segmentation(via_dicom.dataset, mask, AlgorithmInfo())
    assert (seg.Rows, seg.Columns) == kvasir_rgb.shape[:2]


@pytest.mark.parametrize("overrides", [{}, {"normalization": "imagenet", "threshold": 0.3}],
                         ids=["defaults", "imagenet-threshold"])
@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_dicom_masks_equal_the_bundle_run(tmp_path: Path, overrides: dict) -> None:
    """With the shipped model, the DICOM path's mask of an image (wrapped as VL Endoscopic) equals the PNG that
    ``python -m monai.bundle run --config_file configs/inference.json`` writes for it, with the bundle defaults and
    with a non-default normalization and threshold given to both as overrides.

    With the defaults the shipped model finds a polyp in each image, and the transposed input gives another mask
    (the network is not transpose-invariant, so order matters). Under the overrides the model sees inputs it was not
    trained on and may find nothing, so there the test asks instead that the overrides change the mask of some
    image: a DICOM path that ignored them would then differ from the bundle's PNG."""
    data = tmp_path / "data"
    data.mkdir()
    images = sorted((REPO / "bundle" / "sample_data" / "images").glob("*.jpg"))[:2]
    for path in images:
        shutil.copy(path, data / path.name)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--dataset_dir", str(data), "--pred_dir", str(tmp_path / "pred"), "--overlay", "False",
               "--num_workers", "0", *[arg for k, v in overrides.items() for arg in (f"--{k}", json.dumps(v))]]
    proc = subprocess.run(command, cwd=REPO / "bundle", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    predictor = Predictor.from_bundle(REPO / "bundle", overrides=overrides)
    defaults = Predictor.from_bundle(REPO / "bundle") if overrides else predictor
    changed = []
    for path in images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        assert rgb.shape[0] != rgb.shape[1]  # non-square: a transposition would show
        expected = np.asarray(Image.open(tmp_path / "pred" / f"{path.stem}_mask.png")) > 0
        assert expected.shape == rgb.shape[:2]
        image = load_image(wrap_vl_endoscopic(rgb)).image
        # Two processes may sum in another order (MKL picks its threads at run time, fewer on a loaded machine): a
        # pixel whose probability lies within 1e-4 of the threshold may fall on either side; no other may differ.
        differ = predictor.predict(image) != expected
        probability = 1.0 / (1.0 + np.exp(-predictor.logits(image)[0].astype(np.float64)))
        near_threshold = np.abs(probability - overrides.get("threshold", 0.5)) < 1e-4
        assert not (differ & ~near_threshold).any(), f"{path.name}: {int(differ.sum())} pixels differ"
        if overrides:
            changed.append(not np.array_equal(defaults.predict(image), expected))
        else:
            assert 0.001 < expected.mean() < 0.999, path.name
            swapped = predictor.predict(np.ascontiguousarray(np.swapaxes(image, 1, 2))).T
            assert not np.array_equal(swapped, expected), path.name
    assert not overrides or any(changed), f"the overrides {overrides} changed no mask"


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


def test_local_files_mode_series_and_images(tmp_path: Path, kvasir_rgb: np.ndarray, tiny_checkpoint: Path,
                                            network_json: str, predictor: Predictor) -> None:
    """--files: a 6-slice CT series -> one 6-frame SEG; two endoscopy stills -> one SEG each; a truncated file
    and a duplicate SOPInstanceUID are refused and reported; outputs are 0644 and pass dciodvfy."""
    from vmunetv2_monai.dicom.cli import main

    inputs = tmp_path / "in"
    stills = [write_atomic(wrap_vl_endoscopic(kvasir_rgb), inputs / f"still{i}.dcm") for i in range(2)]
    slices = ct_series(6)
    for ds in slices:
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    ct_paths = [write_atomic(ds, inputs / f"ct{i}.dcm") for i, ds in enumerate(reversed(slices))]
    bad = inputs / "bad.dcm"
    bad.write_bytes(write_atomic(wrap_vl_endoscopic(kvasir_rgb), tmp_path / "other.dcm").read_bytes()[:-500])
    duplicate = inputs / "dup.dcm"
    duplicate.write_bytes(stills[1].read_bytes())
    out = tmp_path / "out"
    rc = main(["--files", str(bad), *map(str, stills), *map(str, ct_paths), str(duplicate), "--output-dir",
               str(out), "--overlay", "--checkpoint", str(tiny_checkpoint), "--network-json", network_json,
               "--log-level", "WARNING"])
    assert rc == 1  # the truncated file and the duplicate are reported; the rest is segmented
    files = sorted(out.iterdir())
    assert not [p for p in files if p.name.startswith(".")]  # no temporary files left
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}
    assert_valid_dicom(files)
    segs = [hd.seg.segread(p) for p in files if pydicom.dcmread(p).SOPClassUID.name == "Segmentation Storage"]
    overlays = [p for p in files if pydicom.dcmread(p).SOPClassUID.name == "Secondary Capture Image Storage"]
    assert len(segs) == 3 and len(overlays) == 2 + 6
    series_seg = [s for s in segs if s.NumberOfFrames == 6]
    assert len(series_seg) == 1
    seg = series_seg[0]
    assert {str(t[2]) for t in seg.get_source_image_uids()} == {str(ds.SOPInstanceUID) for ds in slices}
    params = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    assert "greyscale_window" in params and "center 40 width 400" in params
    assert "bundle_intensity=fixed [0, 255], normalization unit" in params  # the config's rule after the window
    volume = seg.get_volume(combine_segments=True)
    assert volume.array.shape == (6, 128, 128)
    window = grey_window(slices[0])
    for ds in slices:
        expected = predictor.predict(load_image(ds, window=window).image)
        np.testing.assert_array_equal(seg_mask_for_source(seg, str(ds.SOPInstanceUID)), expected)
    for still in stills:
        source = pydicom.dcmread(still)
        (mine,) = [s for s in segs if str(s.get_source_image_uids()[0][2]) == str(source.SOPInstanceUID)]
        assert mine.NumberOfFrames == 1
        np.testing.assert_array_equal(seg_mask_for_source(mine, str(source.SOPInstanceUID)),
                                      predictor.predict(load_image(source).image))


def test_test_wrapper_and_single_segs_are_valid(tmp_path: Path, kvasir_rgb: np.ndarray, predictor: Predictor) -> None:
    """dciodvfy: the VL Endoscopic test wrapper, and the SEG and overlay of it, of a real ultrasound file and of a
    CT slice (pixel spacing carried over where the source has it)."""
    still = wrap_vl_endoscopic(kvasir_rgb)
    still.PixelSpacing = [0.25, 0.25]
    sources = [still, pydicom.dcmread(ultrasound_files()["US1_UNCR.dcm"]), ct_series(1)[0]]
    written = [write_atomic(still, tmp_path / "wrapper.dcm")]
    for i, source in enumerate(sources):
        image = load_image(source)
        mask = predictor.predict(image.image)
        seg = build_segmentation(source, mask, AlgorithmInfo())
        if "PixelSpacing" in source:
            measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        overlay = build_overlay(source, image.display_rgb(), mask, AlgorithmInfo())
        assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert overlay.LossyImageCompression == source.get("LossyImageCompression", "00")
        written += [write_atomic(seg, tmp_path / f"seg{i}.dcm"), write_atomic(overlay, tmp_path / f"ov{i}.dcm")]
    assert_valid_dicom(written)


def test_cli_bundle_overrides_set_network_and_inference_mode(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--bundle-overrides (a recipe's overrides.json) reaches the predictor; a bad file is named."""
    from vmunetv2_monai.dicom.cli import _predictor, build_parser
    from vmunetv2_monai.inferers import ResizeInferer

    from .conftest import TINY_NET

    overrides = tmp_path / "overrides.json"
    net = {k: v for k, v in TINY_NET.items() if k not in ("spatial_dims", "in_channels", "out_channels")}
    overrides.write_text(json.dumps({**net, "keep_unused_stage": True, "inference_mode": "resize",  # as TINY_NET
                                     "image_size": [64, 64]}))
    base = ["--bundle-dir", str(REPO / "bundle"), "--checkpoint", str(tiny_checkpoint)]
    pred = _predictor(build_parser().parse_args([*base, "--bundle-overrides", str(overrides)]))
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == (64, 64)
    pred = _predictor(build_parser().parse_args(["--checkpoint", str(tiny_checkpoint), "--network-json",
                                                 json.dumps(TINY_NET), "--bundle-overrides", str(overrides)]))
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == (64, 64)  # without a bundle too
    overrides.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="overrides.json: expected a JSON object"):
        _predictor(build_parser().parse_args([*base, "--bundle-overrides", str(overrides)]))


#: pydicom test files with Pixel Spacing but no Slice Thickness: a secondary capture, JPEG 2000 and JPEG Extended
#: secondary captures with a frame of reference, and a computed radiograph.
SPACING_WITHOUT_THICKNESS = ("SC_rgb.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "RG1_UNCR.dcm")


def test_pixel_spacing_without_slice_thickness_gets_a_valid_seg(tmp_path: Path, tiny_checkpoint: Path,
                                                                 network_json: str) -> None:
    """Issue 25, point 2 case 3: highdicom wrote a Pixel Measures item without Slice Thickness and then refused
    to read it back, so these files got no SEG. Now each gets one that passes dciodvfy and reads back with the
    source's pixel spacing; the source dataset is not modified on the way."""
    from pydicom.data import get_testdata_file

    from vmunetv2_monai.dicom.cli import main

    paths = {name: get_testdata_file(name) for name in SPACING_WITHOUT_THICKNESS}
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in paths.values()}
    assert all("PixelSpacing" in s and "SliceThickness" not in s for s in sources.values())
    out = tmp_path / "out"
    rc = main(["--files", *paths.values(), "--output-dir", str(out), "--checkpoint", str(tiny_checkpoint),
               "--network-json", network_json, "--log-level", "WARNING"])
    assert rc == 0
    files = sorted(out.iterdir())
    assert len(files) == 2 * len(paths)  # a SEG and its SR each
    assert_valid_dicom(files)
    for path in (p for p in files if pydicom.dcmread(p).Modality == "SEG"):
        seg = hd.seg.segread(path)
        ((_, _, ref),) = seg.get_source_image_uids()
        source = sources[str(ref)]
        shared = seg.SharedFunctionalGroupsSequence[0]
        if min(float(v) for v in source.PixelSpacing) == 0:
            assert "PixelMeasuresSequence" not in shared
            continue
        measures = shared.PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert float(measures.SliceThickness) == min(float(v) for v in source.PixelSpacing)
    source = pydicom.dcmread(paths["SC_rgb.dcm"])
    build_segmentation(source, np.zeros((source.Rows, source.Columns), bool), AlgorithmInfo())
    assert "SliceThickness" not in source


def test_oblique_slice_overlay_keeps_its_orientation(tmp_path: Path, predictor: Predictor) -> None:
    """Issue 25, point 2 case 5: an oblique CT slice gave Patient Orientation 'LP', which highdicom's SCImage
    refused, so --overlay lost the SEG too. The overlay now carries the full letters and passes dciodvfy."""
    (source,) = ct_series(1)
    c, s = np.cos(0.5), np.sin(0.5)
    source.ImageOrientationPatient = [round(float(v), 6) for v in (c, s, 0.0, -s, c, 0.0)]
    image = load_image(source)
    mask = predictor.predict(image.image)
    overlay = build_overlay(source, image.display_rgb(), mask, AlgorithmInfo())
    assert list(overlay.PatientOrientation) == ["LP", "PR"]
    seg = build_segmentation(source, mask, AlgorithmInfo())
    assert_valid_dicom([write_atomic(overlay, tmp_path / "overlay.dcm"), write_atomic(seg, tmp_path / "seg.dcm")])


#: pydicom's character-set test images (secondary captures) -> Specific Character Set of their SEG and overlay.
CHARSET_FILES = {
    # code extensions (\\ISO 2022 IR 87: empty first value, issue 25 case 6): UTF-8, as dcmjs (OHIF) reads one
    # value only
    "chrH31.dcm": "ISO_IR 192",
    "chrH32.dcm": "ISO_IR 192",
    "chrI2.dcm": "ISO_IR 192",  # \\ISO 2022 IR 149 (Korean), missing from highdicom's terms: written in UTF-8
    "chrX1.dcm": "ISO_IR 192", "chrX2.dcm": "GB18030", "chrFren.dcm": "ISO_IR 100", "chrGerm.dcm": "ISO_IR 100",
    "chrGreek.dcm": "ISO_IR 126", "chrRuss.dcm": "ISO_IR 144", "chrArab.dcm": "ISO_IR 127",
    "chrHbrw.dcm": "ISO_IR 138",
}


def test_character_sets_give_valid_seg_and_overlay(tmp_path: Path, predictor: Predictor) -> None:
    """Issue 25, point 2 cases 6 and 7: a Japanese \\ISO 2022 IR 87 source got no SEG (highdicom refused the empty
    first value), and overlays declared no character set, so non-ASCII names were undeclared bytes. Now every
    SEG and overlay declares a set that encodes the source's names, passes dciodvfy and reads back with them."""
    from pydicom.data import get_charset_files

    paths = {name: get_charset_files(name)[0] for name in CHARSET_FILES}
    sources = {name: pydicom.dcmread(path) for name, path in paths.items()}
    out = tmp_path / "out"
    summary = segment_files(list(paths.values()), out, Segmenter(predictor, overlay=True))
    assert not summary.failed and len(summary.stored) == len(paths)
    written = sorted(out.iterdir())
    assert len(written) == 3 * len(paths)  # SEG, overlay, SR
    assert_valid_dicom(written)
    by_source: dict[str, list[pydicom.Dataset]] = {}
    for path in written:
        ds = pydicom.dcmread(path)
        if ds.Modality == "SEG":
            ((_, _, ref),) = hd.seg.segread(path).get_source_image_uids()
        elif ds.Modality == "SR":  # evidence: the SEG and the source
            (ref,) = [i.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                      for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence
                      if i.ReferencedSOPClassUID != SEG_SOP_CLASS_UID]
        else:
            ref = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        by_source.setdefault(str(ref), []).append(ds)
    for name, expected in CHARSET_FILES.items():
        source = sources[name]
        objects = sorted(by_source[str(source.SOPInstanceUID)], key=lambda ds: ds.Modality)
        assert [ds.Modality for ds in objects] == ["OT", "SEG", "SR"], name
        for ds in objects:
            charset = ds.SpecificCharacterSet
            assert (list(charset) if isinstance(charset, pydicom.multival.MultiValue) else charset) == expected, name
            assert str(ds.PatientName) == str(source.PatientName), name
