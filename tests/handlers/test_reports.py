"""CaseReportWriter with MONAI's metric handlers (as evaluate.json sets them) writes the project's one per-case
table, whose rows equal vmunetv2_monai.metrics.case_metrics of the same masks (empty masks included)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import ConfusionMatrix, HausdorffDistance, IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric, MeanIoU

from vmunetv2_monai.handlers import CaseReportWriter
from vmunetv2_monai.metrics import CASE_COLUMNS, EMPTY_RULE, case_metrics, read_case_rows


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    empty = np.zeros((9, 11), bool)
    box = empty.copy()
    box[2:6, 3:8] = True
    return [(empty, empty), (box, empty), (np.roll(box, 1, axis=0), box), (rng.random((9, 11)) > 0.5, box)]


def test_per_case_csv_equals_case_metrics(tmp_path: Path) -> None:
    pairs = _pairs()
    batches = [{"name": [f"case{i}"], "pair": [pair]} for i, pair in enumerate(pairs)]

    def step(engine: Engine, batch: dict) -> list[dict[str, torch.Tensor]]:
        return [{"pred": torch.as_tensor(p, dtype=torch.float32)[None],
                 "label": torch.as_tensor(g, dtype=torch.float32)[None]} for p, g in batch["pair"]]

    engine = Engine(step)
    transform = from_engine(["pred", "label"])
    metrics = {
        "val_mean_dice": IgniteMetricHandler(DiceMetric(**EMPTY_RULE), output_transform=transform),
        "val_mean_iou": IgniteMetricHandler(MeanIoU(**EMPTY_RULE), output_transform=transform),
        "val_hd95": HausdorffDistance(include_background=True, percentile=95, output_transform=transform),
        "val_pooled_dsc": ConfusionMatrix(include_background=True, metric_name="f1 score", compute_sample=False,
                                          reduction="sum", output_transform=transform),
    }
    for name, metric in metrics.items():
        metric.attach(engine, name)
    CaseReportWriter(tmp_path).attach(engine)
    engine.run(batches)

    header = (tmp_path / "per_case.csv").read_text().splitlines()[0]
    assert header == ",".join(CASE_COLUMNS) == "name,val_mean_dice,val_mean_iou,val_hd95,tp,fp,tn,fn"
    rows = read_case_rows(tmp_path / "per_case.csv")
    assert [r["name"] for r in rows] == [b["name"][0] for b in batches]
    for row, (pred, gt) in zip(rows, pairs, strict=True):
        expected = case_metrics(pred, gt)
        for key in ("dice", "iou", "tp", "fp", "tn", "fn"):
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (row["name"], key)
        assert math.isnan(row["hd95"]) == math.isnan(expected["hd95"]), row["name"]
    assert rows[0]["dice"] == 1.0 and rows[1]["dice"] == 0.0  # both empty; empty truth with a prediction
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_cases"] == len(pairs)
    assert summary["val_mean_dice"] == pytest.approx(np.mean([r["dice"] for r in rows]), abs=1e-6)


def test_missing_metric_is_named(tmp_path: Path) -> None:
    engine = Engine(lambda engine, batch: None)
    CaseReportWriter(tmp_path, dice_metric="val_dice").attach(engine)
    with pytest.raises(KeyError, match="val_dice"):
        engine.run([{"name": ["a"]}])
