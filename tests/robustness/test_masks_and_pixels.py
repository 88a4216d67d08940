"""Nothing silently wrong with odd masks and bad pixels (issue 26, groups B and C): every mask file kind a user may
have is read as its lesion or refused with its name, training on all-empty masks stops naming the data, and NaN
pixels are refused with the file's name in inference and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.data import InputImages, build_datalist, save_datalist
from vmunetv2_monai.metrics import dice_score

from .conftest import BUNDLE, TINY, TINY_ARGS, cfg, disc_pair, error_chain, load_transforms, run_bundle, tail, workflow

H, W = 48, 64
YY, XX = np.mgrid[:H, :W]
LESION = (YY - 24) ** 2 + (XX - 30) ** 2 < 14**2  # (H, W)


def _read_mask(path: Path) -> np.ndarray:
    """``path`` through the bundle's read transforms beside a blank image: (H, W) bool."""
    blank = path.with_name("blank.png")
    Image.new("RGB", (W, H)).save(blank)
    label = load_transforms()({"image": str(blank), "label": str(path)})["label"]
    return np.asarray(label)[0].T > 0.5


def _write_mask(kind: str, folder: Path) -> Path:
    """A real PNG/JPEG mask of :data:`LESION` stored the way ``kind`` says."""
    if kind == "zero_one_png":
        arr, suffix = LESION.astype(np.uint8), ".png"
    elif kind in ("zero_255_png", "zero_255_jpeg"):
        arr, suffix = LESION.astype(np.uint8) * 255, kind[-5:].replace("_", ".")
    elif kind == "zero_one_jpeg":
        arr, suffix = LESION.astype(np.uint8), ".jpeg"
    elif kind == "labels_png":  # index mask: the lesion's left half is label 1, its right half label 2
        arr, suffix = (LESION * np.where(XX < 30, 1, 2)).astype(np.uint8), ".png"
    elif kind == "soft_percent_png":  # probabilities in percent: 60-100 inside, 0-40 outside
        ramp = (XX * 40 // W).astype(np.uint8)
        arr, suffix = np.where(LESION, 60 + ramp, ramp).astype(np.uint8), ".png"
    else:
        raise ValueError(kind)
    path = folder / f"{kind}{suffix}"
    Image.fromarray(arr).save(path, **({"quality": 90} if suffix == ".jpeg" else {}))
    return path


@pytest.mark.parametrize("kind, min_dice", [
    ("zero_one_png", 1.0), ("zero_255_png", 1.0), ("zero_255_jpeg", 0.95), ("zero_one_jpeg", 0.95),
    ("labels_png", 1.0), ("soft_percent_png", 1.0),
])
def test_every_mask_kind_is_read_as_its_lesion(tmp_path, kind, min_dice):
    path = _write_mask(kind, tmp_path)
    stored = np.asarray(Image.open(path))
    if kind in ("zero_one_jpeg", "labels_png", "soft_percent_png"):
        assert 1 < stored.max() <= 127  # the range the old rule read as all background
    got = _read_mask(path)
    assert dice_score(got, LESION) >= min_dice, (kind, dice_score(got, LESION))


@pytest.mark.parametrize("values, dtype, reason", [
    ((0, 40), np.uint8, "ambiguous"),  # labels beyond 15 or a soft mask that never passes 50 %
    ((0, 120), np.uint8, "ambiguous"),  # 8-bit without a value above 127
    ((0, 1000), np.uint16, "ambiguous"),  # 16-bit without a value above 32767
])
def test_ambiguous_mask_files_are_refused_by_name(tmp_path, values, dtype, reason):
    path = tmp_path / "odd_mask.png"
    Image.fromarray(np.where(LESION, values[1], values[0]).astype(dtype)).save(path)
    chain = error_chain(lambda: _read_mask(path))
    assert reason in chain and "odd_mask.png" in chain


def _nan_tiff(path: Path, size: tuple[int, int] = (H, W)) -> None:
    """A grey float TIFF of ``size`` (H, W) with a 3 x 3 NaN patch."""
    values = np.random.default_rng(0).uniform(0, 255, size).astype(np.float32)
    values[5:8, 5:8] = np.nan
    Image.fromarray(values, mode="F").save(path)


def test_nan_mask_file_is_refused_by_name(tmp_path):
    _nan_tiff(tmp_path / "nan_mask.tif")
    chain = error_chain(lambda: _read_mask(tmp_path / "nan_mask.tif"))
    assert "nan_mask.tif" in chain and "NaN" in chain


def test_training_on_all_empty_masks_stops_naming_the_data(dataset, tmp_path):
    for mask in (dataset / "masks").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    out = tmp_path / "out"
    chain = error_chain(workflow(("train",), dataset_dir=str(dataset), output_dir=str(out), batch_size=2).initialize)
    assert "are empty" in chain and str(dataset) in chain, chain
    save_datalist(build_datalist(dataset), tmp_path / "list.json")
    chain = error_chain(workflow(("train",), datalist_file=str(tmp_path / "list.json"), output_dir=str(out),
                                 batch_size=2).initialize)
    assert "are empty" in chain and "list.json" in chain, chain
    assert not (out / "models").exists()


@pytest.mark.slow  # runs monai.bundle in a subprocess
def test_training_command_on_all_empty_masks_fails_naming_the_folder(dataset, tmp_path):
    for mask in (dataset / "masks").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    out = tmp_path / "out"
    code, log = run_bundle(["--config_file", str(cfg("train")), "--bundle_root", str(BUNDLE), "--dataset_dir",
                            str(dataset), "--output_dir", str(out), "--num_workers", "0", "--batch_size", "2",
                            *TINY_ARGS], cwd=tmp_path)
    last = log.strip().splitlines()[-1]
    assert code != 0 and last.startswith("vmunetv2_monai error: DataListError") and str(dataset) in last, tail(log)
    assert "Epoch[1]" not in log and not (out / "models").exists()


def test_training_on_label_masks_passes_the_check_and_ambiguous_ones_are_named(dataset, tmp_path):
    masks = sorted((dataset / "masks").iterdir())
    for mask in masks:  # 0/255 discs -> index masks {0, 2}: read as lesion, not as all background
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 2).save(mask)
    workflow(("train",), dataset_dir=str(dataset), output_dir=str(tmp_path / "a"), batch_size=2).initialize()
    for mask in masks:
        Image.fromarray((np.asarray(Image.open(mask)) > 0).astype(np.uint8) * 40).save(mask)
    chain = error_chain(workflow(("train",), dataset_dir=str(dataset), output_dir=str(tmp_path / "b"),
                                 batch_size=2).initialize)
    assert "ambiguous" in chain and any(m.name in chain for m in masks), chain


def test_nan_image_in_an_inference_folder_is_named_and_the_others_are_read(tmp_path):
    inputs = tmp_path / "inputs"
    disc_pair(inputs, "good0")
    disc_pair(inputs, "good1")
    _nan_tiff(inputs / "images" / "patchy.tif")
    found = InputImages(inputs, load_transforms(("image",)))
    assert sorted(it["name"] for it in found.good) == ["good0", "good1"]
    assert len(found.bad) == 1 and "patchy.tif" in found.bad[0] and "NaN" in found.bad[0], found.bad


def test_nan_image_in_bundle_inference_fails_naming_it_and_segments_the_rest(tmp_path):
    net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, deep_supervision=True, keep_unused_stage=False,
                   **{k: v for k, v in TINY.items() if k != "image_size"})
    ckpt = tmp_path / "tiny.pt"
    torch.save(net.state_dict(), ckpt)
    inputs = tmp_path / "inputs"
    disc_pair(inputs, "good0")
    _nan_tiff(inputs / "images" / "patchy.tif")
    pred = tmp_path / "pred"
    wf = workflow(("inference",), dataset_dir=str(inputs), output_dir=str(tmp_path), ckpt_path=str(ckpt),
                  pred_dir=str(pred))
    wf.initialize()
    chain = error_chain(wf.run)
    assert "patchy.tif" in chain and "NaN" in chain and "1 of 2" in chain, chain
    # the in-process run still holds the folder's lock (vmunetv2_monai.locks): its hidden lock file is not an output
    assert sorted(p.name for p in pred.iterdir() if p.name != ".vmunetv2.lock") == ["good0_mask.png",
                                                                                     "good0_overlay.png"]


def _root_message(fn) -> str:
    """Call ``fn``; it must raise. The innermost cause, as the command's last line shows it."""
    with pytest.raises(Exception) as info:
        fn()
    err = info.value
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


@pytest.mark.parametrize("victim", ["case0", "case5"])  # the first training item (the pre-check reads it) or not
def test_nan_image_in_training_is_named_not_the_learning_rate(dataset, tmp_path, victim):
    (dataset / "images" / f"{victim}.png").unlink()
    _nan_tiff(dataset / "images" / f"{victim}.tif", size=(40, 48))
    out = tmp_path / "out"
    wf = workflow(("train",), dataset_dir=str(dataset), output_dir=str(out), epochs=1, batch_size=2,
                  progress_bar=False)
    if victim == "case0":
        root = _root_message(wf.initialize)  # the pre-check of the labels reads the first training pair
    else:
        wf.initialize()
        root = _root_message(wf.run)  # the epoch's data loader
    assert f"{victim}.tif" in root and "NaN" in root and "learning_rate" not in root, root
    assert not (out / "models" / "model.pt").exists()
