"""Broken DICOM inputs are refused naming the file; the CPU kernel's build folder is per checkout."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from vmunetv2_monai.dicom.reader import UnsupportedDicomError, load_image
from vmunetv2_monai.ops.selective_scan.cpu import _build_dir

from ..dicom.conftest import wrap_vl_endoscopic


def _good(tmp_path):
    ds = wrap_vl_endoscopic(np.full((12, 16, 3), 100, dtype=np.uint8))
    path = tmp_path / "good.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, path


@pytest.mark.parametrize("damage, reason", [
    ("text", "not a readable DICOM"), ("empty", "not a readable DICOM"), ("truncated_pixels", "truncated pixel data"),
    ("no_pixels", "pixel data"), ("multi_frame", "multi-frame"),
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
