"""Odd and broken image and mask files: read as what they show, or refused with the file's name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmunetv2_monai.data import DataListError, find_pairs

from .conftest import disc_pair, load_transforms

RGB = np.array([[[200, 30, 60], [10, 220, 90]], [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # (2, 2, 3)


def _hwc(image) -> np.ndarray:
    """(C, X, Y) transform output -> (Y, X, C) array in [0, 255]."""
    return np.asarray(image).transpose(2, 1, 0) * 255.0


def _load(path: Path, key: str = "image") -> np.ndarray:
    """``path`` through the bundle's load transforms, as an image or (beside a blank image) as a mask."""
    if key == "image":
        return np.asarray(load_transforms(("image",))({"image": str(path)})["image"])
    with Image.open(path) as m:
        blank = path.with_name("blank.png")
        Image.new("RGB", m.size).save(blank)
    return np.asarray(load_transforms()({"image": str(blank), "label": str(path)})["label"])


def _write_image(kind: str, path: Path) -> None:
    img = Image.fromarray(RGB)
    if kind == "cmyk_jpeg":
        img.convert("CMYK").save(path, quality=100)
    elif kind == "palette_png":
        img.quantize(colors=8).save(path)
    elif kind == "palette_png_transparent":
        pal = img.quantize(colors=8)
        pal.info["transparency"] = 0
        pal.save(path, transparency=0)
    elif kind == "rgba_png":
        img.convert("RGBA").save(path)
    elif kind == "bmp":
        img.save(path)
    elif kind == "rgb_png":
        img.save(path)


# expected: the image as RGB (CMYK JPEG and palette conversions are close, not exact)
@pytest.mark.parametrize("kind, suffix, tol", [
    ("rgb_png", ".png", 0), ("cmyk_jpeg", ".jpg", 12), ("palette_png", ".png", 40),
    ("palette_png_transparent", ".png", 40), ("rgba_png", ".png", 0), ("bmp", ".bmp", 0),
])
def test_colour_images_read_as_rgb(tmp_path, kind, suffix, tol):
    path = tmp_path / f"x{suffix}"
    _write_image(kind, path)
    got = _hwc(_load(path))
    assert got.shape == (2, 2, 3)
    assert np.abs(got - RGB).max() <= tol + 1e-3, (kind, got.round())


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16"])
def test_grey_modes_become_three_equal_channels(tmp_path, mode):
    grey = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    elif mode == "1":
        img = Image.fromarray(grey > 100).convert("1")
    else:
        img = Image.fromarray(grey).convert(mode)
    img.save(tmp_path / "g.png")
    got = _hwc(_load(tmp_path / "g.png"))
    expected = np.where(grey > 100, 255, 0) if mode == "1" else grey
    assert got.shape == (2, 2, 3)
    assert np.allclose(got[..., 0], got[..., 2]) and np.abs(got[..., 0] - expected).max() < 1.0, got[..., 0]


def test_16bit_image_is_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 16, dtype=np.uint16).reshape(4, 4)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    got = _hwc(_load(tmp_path / "r.png"))[..., 0]
    assert got.max() == pytest.approx(255.0, abs=0.5) and (got < 250).sum() >= 14  # a ramp, not all white


@pytest.mark.parametrize("kind", ["white", "red", "palette", "jpeg", "rgba", "grey_alpha", "zero_one", "uint16_one",
                                  "uint16_full", "one_bit"])
def test_masks_of_any_colour_and_depth_binarise_to_the_lesion(tmp_path, kind):
    lesion = np.zeros((16, 16), dtype=bool)
    lesion[4:12, 5:11] = True
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[lesion] = (255, 0, 0) if kind in ("red", "palette") else (255, 255, 255)
    path = tmp_path / ("m.jpg" if kind == "jpeg" else "m.png")
    if kind in ("white", "red", "jpeg"):
        Image.fromarray(rgb).save(path)
    elif kind == "palette":
        Image.fromarray(rgb).quantize(colors=2).save(path)
    elif kind == "rgba":
        Image.fromarray(rgb).convert("RGBA").save(path)  # alpha 255 everywhere must not become lesion
    elif kind == "grey_alpha":
        Image.fromarray(rgb[..., 0]).convert("LA").save(path)
    elif kind == "zero_one":
        Image.fromarray(lesion.astype(np.uint8)).save(path)
    elif kind == "uint16_one":
        Image.fromarray(lesion.astype(np.uint16)).save(path)
    elif kind == "uint16_full":
        Image.fromarray(lesion.astype(np.uint16) * 65535).save(path)
    else:
        Image.fromarray(lesion).convert("1").save(path)
    mask = _load(path, "label")
    assert mask.shape == (1, 16, 16)
    assert np.array_equal(mask[0].T > 0.5, lesion), kind


@pytest.mark.parametrize("damage", ["truncated_jpeg", "zero_bytes", "text", "random_bytes", "truncated_png"])
def test_data_check_names_a_broken_image(dataset, damage):
    victim = dataset / "images" / "case3.png"
    data = victim.read_bytes()
    if damage == "truncated_jpeg":
        victim.unlink()
        victim = victim.with_suffix(".jpg")
        buf = victim.with_name("full.jpg")
        Image.open(dataset / "images" / "case2.png").convert("RGB").resize((200, 160)).save(buf, quality=95)
        victim.write_bytes(buf.read_bytes()[: buf.stat().st_size // 2])
        buf.unlink()
    elif damage == "zero_bytes":
        victim.write_bytes(b"")
    elif damage == "text":
        victim.write_text("not an image\n")
    elif damage == "random_bytes":
        victim.write_bytes(np.random.default_rng(0).bytes(500))
    else:
        victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataListError) as err:
        find_pairs(dataset / "images", dataset / "masks")
    assert victim.name in str(err.value) and "1 problem" in str(err.value)


def test_broken_symlink_is_named_and_valid_symlink_is_used(dataset, tmp_path):
    outside = tmp_path / "outside"
    disc_pair(outside, "linked")
    os.symlink(outside / "images" / "linked.png", dataset / "images" / "linked.png")
    os.symlink(outside / "masks" / "linked.png", dataset / "masks" / "linked.png")
    assert "linked" in [it["name"] for it in find_pairs(dataset / "images", dataset / "masks")]
    os.symlink(tmp_path / "gone.png", dataset / "images" / "dangling.png")
    with pytest.raises(DataListError, match="broken link .*dangling.png"):
        find_pairs(dataset / "images", dataset / "masks")


def test_non_image_files_are_skipped_with_a_warning(dataset, caplog):
    (dataset / "images" / "notes.txt").write_text("x")
    items = find_pairs(dataset / "images", dataset / "masks")
    assert len(items) == 6 and "notes.txt" in caplog.text
