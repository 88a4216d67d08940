"""Input files that passed the pre-check and then stopped a run (issue 26, group D; J, K): a multi-page TIFF, a float
RGB TIFF, names too long for the temporary or output files, a dangling or looping link, EXIF-rotated pairs and a bad
checkpoint given with inputs. Each is named, and one bad file never stops the others."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vmunetv2_monai.data import DataListError, InputImages, find_pairs
from vmunetv2_monai.files import NAME_MAX

from .conftest import BUNDLE, TINY_ARGS, cfg, disc_pair, load_transforms, run_bundle, tail, tiny_state

GOOD = ("good_a", "good_b")


def _rgb(seed: int = 0, size: tuple[int, int] = (36, 44)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def _bad_file(kind: str, folder: Path, outside: Path) -> Path:
    """Write one odd input of ``kind`` into ``folder``; returns the path the user would see named."""
    if kind == "multi_page_tiff":
        path = folder / "stack.tif"
        Image.fromarray(_rgb(1)).save(path, save_all=True, append_images=[Image.fromarray(_rgb(2))] * 2)
    elif kind == "float_rgb_tiff":
        path = folder / "float_rgb.tif"
        tifffile.imwrite(path, _rgb(3).astype(np.float32), photometric="rgb")
    elif kind == "output_name_too_long":  # the image name fits, '<stem>_overlay.png' does not
        path = folder / ("x" * (NAME_MAX - 7) + ".png")
        Image.fromarray(_rgb(4)).save(path)
    elif kind == "dangling_link":
        path = folder / "dangling.png"
        os.symlink(outside / "gone.png", path)
    else:  # looping_link: a link to itself
        path = folder / "loop.png"
        os.symlink(path, path)
    return path


def _inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, name in enumerate(GOOD):
        Image.fromarray(_rgb(10 + i)).save(folder / f"{name}.png")
    return folder


def _infer(tmp_path: Path, inputs: Path, ckpt: Path) -> tuple[int, str, str]:
    args = ["--config_file", str(cfg("inference")), "--bundle_root", str(BUNDLE), "--dataset_dir", str(inputs),
            "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(ckpt), "--num_workers", "0", *TINY_ARGS]
    code, log = run_bundle(args, cwd=tmp_path)
    return code, log, log.strip().splitlines()[-1]


def _predicted(tmp_path: Path, stem: str) -> bool:
    pred = tmp_path / "out" / "predictions"
    return (pred / f"{stem}_mask.png").is_file() and (pred / f"{stem}_overlay.png").is_file()


@pytest.mark.parametrize("kind, reason", [
    ("multi_page_tiff", "a multi-page TIFF (3 pages)"),
    ("float_rgb_tiff", "floating-point TIFF with 3 samples per pixel"),
    ("output_name_too_long", f"past the file system's limit of {NAME_MAX}"),
    ("dangling_link", "broken link"),
    ("looping_link", "link loop"),
])
@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_a_bad_input_is_named_last_and_the_others_are_segmented(tmp_path, kind, reason):
    inputs = _inputs(tmp_path)
    bad = _bad_file(kind, inputs, tmp_path)
    code, log, last = _infer(tmp_path, inputs, tiny_state(tmp_path / "model.pt"))
    assert code == 1 and last.startswith("  ") and str(bad) in last and reason in last, tail(log)
    assert "BadInputsError: 1 of 3 input image(s) could not be read" in log, tail(log)
    assert all(_predicted(tmp_path, name) for name in GOOD), tail(log)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_a_long_name_whose_temporary_name_would_not_fit_is_segmented(tmp_path):
    inputs = _inputs(tmp_path)
    stem = "y" * (NAME_MAX - len("_overlay.png") - 3)  # '.tmp<pid>-<stem>_overlay.png' is past NAME_MAX bytes
    Image.fromarray(_rgb(5)).save(inputs / f"{stem}.png")
    code, log, _ = _infer(tmp_path, inputs, tiny_state(tmp_path / "model.pt"))
    assert code == 0, tail(log)
    assert all(_predicted(tmp_path, name) for name in (*GOOD, stem)), tail(log)


@pytest.mark.parametrize("kind, reason", [
    ("multi_page_tiff", "a multi-page TIFF (3 pages)"), ("float_rgb_tiff", "a floating-point TIFF"),
])
def test_training_data_check_names_an_unreadable_tiff(dataset, kind, reason):
    image = _bad_file(kind, dataset / "images", dataset)
    Image.fromarray(np.zeros((36, 44), np.uint8)).save(dataset / "masks" / f"{image.stem}.png")
    with pytest.raises(DataListError) as err:
        find_pairs(dataset / "images", dataset / "masks")
    assert "1 problem" in str(err.value) and f"{image}: {reason}" in str(err.value)


def _exif_rotated_pair(root: Path) -> tuple[Path, Path]:
    """A camera-style JPEG stored 44 x 36 with EXIF Orientation 6 and its mask drawn as a viewer shows it, 36 x 44."""
    disc_pair(root, "rotated")
    image, mask = root / "images" / "rotated.jpg", root / "masks" / "rotated.png"
    (root / "images" / "rotated.png").unlink()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rgb(6, (36, 44))).save(image, exif=exif)
    Image.fromarray(np.zeros((44, 36), np.uint8)).save(mask)
    return image, mask


def test_exif_rotated_pair_mismatch_names_the_orientation(dataset):
    image, mask = _exif_rotated_pair(dataset)
    with pytest.raises(DataListError) as err:
        find_pairs(dataset / "images", dataset / "masks")
    text = str(err.value)
    assert f"{image} is (44, 36), {mask} is (36, 44)" in text and "rotated.jpg has EXIF Orientation 6" in text, text


def test_exif_orientation_is_ignored_with_a_warning_naming_the_file(tmp_path, caplog):
    inputs = _inputs(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(_rgb(7)).save(inputs / "photo.jpg", exif=exif)
    with caplog.at_level(logging.WARNING):
        found = InputImages(inputs, load_transforms(("image",)))
    assert [it["name"] for it in found.good] == ["good_a", "good_b", "photo"] and not found.bad
    assert f"{inputs / 'photo.jpg'} has EXIF Orientation 8: it is read as stored" in caplog.text, caplog.text


@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_bad_checkpoint_is_named_before_the_inputs_are_read(tmp_path):
    inputs = _inputs(tmp_path)
    _bad_file("multi_page_tiff", inputs, tmp_path)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    code, log, last = _infer(tmp_path, inputs, ckpt)
    expected = (f"vmunetv2_monai error: ValueError: checkpoint {ckpt} is empty (0 bytes): an interrupted copy or "
                "download?")
    assert code == 1 and last == expected, tail(log)
    assert "stack.tif" not in log and not (tmp_path / "out" / "predictions").exists(), tail(log)
