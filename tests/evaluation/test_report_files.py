"""Split writer, folder scoring and the report folder on tiny synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmunetv2_monai.evaluation.folders import score_predictions
from vmunetv2_monai.evaluation.recipe import evaluate_models
from vmunetv2_monai.evaluation.split import SplitOverlapError, write_split
from vmunetv2_monai.metrics import read_case_rows


def _item(root: Path, name: str, mask: np.ndarray) -> dict[str, str]:
    rgb = np.stack([mask * 200 + 20] * 3, axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"{name}_gt.png")
    return {"name": name, "image": str(root / f"{name}.png"), "label": str(root / f"{name}_gt.png")}


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[box[0] : box[1], box[2] : box[3]] = True
    return m


def test_split_writer_refuses_overlap(tmp_path: Path) -> None:
    a, b, c = ({"name": n, "image": str(tmp_path / f"{n}.png"), "label": ""} for n in "abc")
    with pytest.raises(SplitOverlapError, match="both 'training' and 'test': b"):
        write_split({"training": [a, b], "validation": [c], "test": [b]}, tmp_path / "split.json")
    assert not (tmp_path / "split.json").exists()
    same_file = {"name": "renamed", "image": a["image"], "label": ""}
    with pytest.raises(SplitOverlapError, match="'validation'"):
        write_split({"training": [a], "validation": [same_file], "test": [c]}, tmp_path / "split.json")
    path = write_split({"training": [a], "validation": [b], "test": [c]}, tmp_path / "split.json")
    assert path.is_file()


def test_score_predictions_errors_name_the_file(tmp_path: Path) -> None:
    item = _item(tmp_path, "case1", _mask(12, 16, (2, 6, 3, 9)))
    preds = tmp_path / "preds"
    preds.mkdir()
    with pytest.raises(FileNotFoundError, match="case1_mask.png"):
        score_predictions([item], preds)
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(preds / "case1_mask.png")  # transposed size
    with pytest.raises(ValueError, match="original resolution"):
        score_predictions([item], preds)


def test_evaluate_models_writes_the_report_folder(tmp_path: Path) -> None:
    items, preds = [], {"good": tmp_path / "good", "bad": tmp_path / "bad"}
    for d in preds.values():
        d.mkdir()
    for i in range(4):
        gt = _mask(20, 24, (2 + i, 10 + i, 3, 12))
        items.append(_item(tmp_path, f"c{i}", gt))
        Image.fromarray(gt.astype(np.uint8) * 255).save(preds["good"] / f"c{i}_mask.png")
        Image.fromarray(np.roll(gt, 4, axis=1).astype(np.uint8) * 255).save(preds["bad"] / f"c{i}_mask.png")
    curves = {"good": {"val_mean_dice": [(1, 0.5), (2, 0.7)]}, "bad": {"val_mean_dice": [(1, 0.2), (2, 0.3)]}}
    runs = {"good": {"epochs": 2}, "bad": {"epochs": 2}}
    rows = {m: score_predictions(items, d) for m, d in preds.items()}
    summaries = evaluate_models(items, rows, preds, curves, runs, tmp_path / "report", "tiny", "notes here",
                                n_boot=100)
    assert summaries["good"]["dice"]["value"] == pytest.approx(1.0)
    assert summaries["bad"]["dice"]["value"] < 0.9
    for name in ("report.md", "metrics.csv", "learning_curves.png", "overlays.png"):
        assert (tmp_path / "report" / name).is_file(), name
    with open(tmp_path / "report" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["model"] for r in rows} == {"good", "bad"}
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| mean Dice (per image) | 1.0000 [1.0000, 1.0000] |" in text and "notes here" in text


def test_read_case_rows_maps_evaluate_columns(tmp_path: Path) -> None:
    """evaluate.json's per_case.csv -> statistics rows; an infinite HD95 (empty mask) becomes NaN; an old file
    without confusion counts is refused by name."""
    path = tmp_path / "per_case.csv"
    path.write_text("name,val_mean_dice,val_mean_iou,val_hd95,tp,fp,tn,fn\na,0.5,0.33,inf,1,1,5,1\n")
    (row,) = read_case_rows(path)
    assert row["name"] == "a" and row["dice"] == 0.5 and np.isnan(row["hd95"]) and row["tn"] == 5
    path.write_text("name,val_mean_dice,val_mean_iou,val_hd95\na,0.5,0.33,2\n")
    with pytest.raises(KeyError, match="no column 'tp'"):
        read_case_rows(path)
