"""Data-list builder: name matching, layouts, splits, and clear errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vmunetv2_monai.data import (
    BinarizeMaskd,
    DataListError,
    EnsureChannelsd,
    build_datalist,
    load_splits,
    save_datalist,
)

SAMPLE = Path(__file__).parent / "kvasir_sample"


def _pair(folder: Path, name: str, size=(20, 16), mask_size=None, ext=".png") -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(folder / "images" / f"{name}{ext}")
    ms = mask_size or size
    Image.fromarray(np.zeros((ms[1], ms[0]), np.uint8)).save(folder / "masks" / f"{name}.png")


def test_sample_pairs_match_by_name_and_split_is_seeded():
    a = build_datalist(SAMPLE, val_fraction=0.25, test_fraction=0.125, seed=3)
    b = build_datalist(SAMPLE, val_fraction=0.25, test_fraction=0.125, seed=3)
    assert a == b
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (5, 2, 1)
    names = [it["name"] for split in a.values() for it in split]
    assert sorted(names) == sorted(p.stem for p in (SAMPLE / "images").iterdir())
    for it in a["training"]:
        assert Path(it["image"]).name == Path(it["label"]).name
    assert not {it["name"] for it in a["validation"]} & {it["name"] for it in a["test"]}
    c = build_datalist(SAMPLE, val_fraction=0.25, test_fraction=0.125, seed=4)
    assert c != a


def test_matching_ignores_sorted_order_and_extensions(tmp_path):
    # image names sort differently from mask names once suffixes differ; pairing must use the stem
    _pair(tmp_path, "b", ext=".jpg")
    _pair(tmp_path, "a_long")
    _pair(tmp_path, "a")
    items = build_datalist(tmp_path, val_fraction=0.0)["training"]
    pairs = {(Path(i["image"]).stem, Path(i["label"]).stem) for i in items}
    assert pairs == {("a", "a"), ("a_long", "a_long"), ("b", "b")}


def test_missing_mask_is_named(tmp_path):
    _pair(tmp_path, "ok")
    _pair(tmp_path, "lonely")
    (tmp_path / "masks" / "lonely.png").unlink()
    with pytest.raises(DataListError, match=r"image without mask: .*lonely\.png"):
        build_datalist(tmp_path)


def test_size_mismatch_is_named(tmp_path):
    _pair(tmp_path, "ok")
    _pair(tmp_path, "bad", size=(20, 16), mask_size=(10, 8))
    with pytest.raises(DataListError, match=r"sizes differ for 'bad'"):
        build_datalist(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    _pair(tmp_path, "ok")
    _pair(tmp_path, "broken")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataListError, match=r"cannot read image file .*broken\.png"):
        build_datalist(tmp_path)


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataListError, match=r"no image files .* in .*images"):
        build_datalist(tmp_path)
    with pytest.raises(DataListError, match="dataset folder not found"):
        build_datalist(tmp_path / "nope")
    with pytest.raises(DataListError, match="unrecognised dataset layout"):
        build_datalist(tmp_path / "images")


def test_split_file_and_protocols(tmp_path):
    for split in ("train", "val", "test"):
        for i in range(3):
            _pair(tmp_path / split, f"{split}{i}")
    plain = build_datalist(tmp_path, layout="isic")
    assert [i["name"] for i in plain["validation"]] == ["val0", "val1", "val2"]
    assert [i["name"] for i in plain["test"]] == ["test0", "test1", "test2"]
    names = tmp_path / "names.txt"
    names.write_text("train1\nval2.jpg\n# comment\n")
    dl = build_datalist(tmp_path, test_names_file=names, val_fraction=0.25, seed=0)
    assert [i["name"] for i in dl["test"]] == ["train1", "val2"]
    assert {i["name"] for i in dl["training"] + dl["validation"]}.isdisjoint({"train1", "val2"})
    assert len(dl["training"]) + len(dl["validation"]) == 7
    paper = build_datalist(tmp_path, test_names_file=names, val_is_test=True)
    assert paper["validation"] == paper["test"]
    names.write_text("ghost\n")
    with pytest.raises(DataListError, match="ghost"):
        build_datalist(tmp_path, test_names_file=names)


def test_pranet_layout_and_json_roundtrip(tmp_path):
    for i in range(4):
        _pair(tmp_path / "TrainDataset", f"t{i}")
    _pair(tmp_path / "TestDataset" / "Kvasir", "k0")
    _pair(tmp_path / "TestDataset" / "ETIS", "e0")
    dl = build_datalist(tmp_path, val_fraction=0.25)
    assert {(i["set"], i["name"]) for i in dl["test"]} == {("Kvasir", "k0"), ("ETIS", "e0")}
    assert len(dl["validation"]) == 1 and len(dl["training"]) == 3
    path = tmp_path / "out" / "dl.json"
    save_datalist(dl, path)
    assert load_splits(datalist_file=path) == json.loads(path.read_text())


def test_mask_binarisation_and_channels():
    mask = torch.tensor([[[0.0, 126.0], [128.0, 255.0]]]).repeat(3, 1, 1)
    out = BinarizeMaskd("label")({"label": mask})["label"]
    assert out.shape == (1, 2, 2) and out.flatten().tolist() == [0, 0, 1, 1]
    assert BinarizeMaskd("label")({"label": torch.tensor([[[0.0, 1.0]]])})["label"].flatten().tolist() == [0, 1]
    grey = torch.rand(1, 4, 4)
    assert EnsureChannelsd("image", 3)({"image": grey})["image"].shape == (3, 4, 4)
    assert EnsureChannelsd("image", 3)({"image": torch.rand(2, 4, 4)})["image"].shape == (3, 4, 4)  # grey+alpha
    with pytest.raises(ValueError, match="5 channels"):
        EnsureChannelsd("image", 3)({"image": torch.rand(5, 4, 4)})
