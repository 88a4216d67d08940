"""The project's one definition of binary segmentation metrics, on :mod:`monai.metrics`, and the one per-case file.

Two conventions are reported side by side, because the literature mixes them:

- per-image (PraNet family): Dice, IoU and HD95 of each image, then the mean over images;
- pooled (VM-UNet family, the official VM-UNetV2 code): one confusion matrix over all pixels of all images,
  then DSC = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), accuracy, sensitivity TP/(TP+FN), specificity TN/(TN+FP).

Per image, Dice and IoU are MONAI's ``compute_dice`` / ``compute_iou`` (what ``DiceMetric`` / ``MeanIoU`` compute,
in the bundle's ``val_mean_dice`` / ``val_mean_iou`` handlers too) with :data:`EMPTY_RULE`: an image whose
prediction and ground truth are both empty has Dice = IoU = 1, an empty ground truth with a non-empty prediction 0.
HD95 is MONAI's ``compute_hausdorff_distance`` (95th percentile, pixels), undefined (NaN) when either mask is empty
and left out of the HD95 mean. Pooled metrics are MONAI's ``compute_confusion_matrix_metric`` (what
``ConfusionMatrixMetric`` with ``compute_sample=False, reduction="sum"`` computes) on the summed confusion counts
(:data:`POOLED_METRICS`).

Every per-case table (the bundle's ``evaluate.json``, ``scripts/run_demo.py``, the results report's ``metrics.csv``)
is written by :func:`write_case_rows` and read by :func:`read_case_rows`: columns :data:`CASE_COLUMNS` (plus a
leading ``model`` column in a table of several models).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)

from .files import atomic_write

__all__ = [
    "CASE_COLUMNS", "EMPTY_RULE", "POOLED_METRICS", "case_metrics", "dice_score", "pooled_metrics", "read_case_rows",
    "write_case_rows",
]

#: Arguments of MONAI's Dice and IoU (functions, metrics and handlers) that give the project's empty-mask rule.
EMPTY_RULE: dict[str, bool] = {"include_background": True, "ignore_empty": False}

#: Pooled metric -> its MONAI ``ConfusionMatrixMetric`` name (the bundle's ``val_<pooled metric>``).
POOLED_METRICS: dict[str, str] = {
    "pooled_dsc": "f1 score",
    "pooled_iou": "threat score",
    "pooled_accuracy": "accuracy",
    "pooled_sensitivity": "sensitivity",
    "pooled_specificity": "specificity",
}

#: ``per_case.csv`` column -> the row key of :func:`case_metrics` (the column names are the bundle's metric names).
CASE_COLUMNS: dict[str, str] = {
    "name": "name",
    "val_mean_dice": "dice",
    "val_mean_iou": "iou",
    "val_hd95": "hd95",
    "tp": "tp",
    "fp": "fp",
    "tn": "tn",
    "fn": "fn",
}

_COUNTS = ("tp", "fp", "tn", "fn")  # MONAI's confusion-matrix order


def _as_tensors(pred: np.ndarray, gt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, 1, *spatial)`` float64 tensors of two masks of one shape (float64: counts stay exact beyond 2**24)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    p = torch.as_tensor(np.asarray(pred, dtype=bool), dtype=torch.float64)[None, None]
    return p, torch.as_tensor(np.asarray(gt, dtype=bool), dtype=torch.float64)[None, None]


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of one binary prediction against its ground truth, with :data:`EMPTY_RULE` (both empty: 1).

    Args:
        pred: predicted mask, nonzero = foreground.
        gt: ground-truth mask of the same shape.

    Returns:
        The Dice coefficient.

    Raises:
        ValueError: when the shapes differ.
    """
    return float(compute_dice(*_as_tensors(pred, gt), **EMPTY_RULE))


def case_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one binary prediction against its ground truth (see the module docstring for the rules).

    Args:
        pred: predicted mask, ``(H, W)``, nonzero = foreground.
        gt: ground-truth mask of the same shape.

    Returns:
        The confusion counts ``tp, fp, tn, fn`` (int) and ``dice``, ``iou``, ``hd95`` (pixels).

    Raises:
        ValueError: when the shapes differ.
    """
    p, g = _as_tensors(pred, gt)
    tp, fp, tn, fn = (int(v) for v in get_confusion_matrix(p, g, include_background=True)[0, 0])
    dice = float(compute_dice(p, g, **EMPTY_RULE))
    iou = float(compute_iou(p, g, **EMPTY_RULE))
    hd95 = float(compute_hausdorff_distance(p, g, percentile=95)) if tp + fp and tp + fn else float("nan")
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "dice": dice, "iou": iou, "hd95": hd95}


def pooled_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Pooled confusion-matrix metrics: MONAI's metric of the confusion counts summed over all rows.

    Args:
        rows: one mapping per image with its confusion counts ``tp, fp, tn, fn``.

    Returns:
        Every key of :data:`POOLED_METRICS` with its value; NaN where the denominator is 0 (e.g. no rows).
    """
    counts = torch.tensor([[float(r[k]) for k in _COUNTS] for r in rows], dtype=torch.float64).reshape(-1, 4)
    total = counts.sum(dim=0)
    return {key: float(compute_confusion_matrix_metric(name, total)) for key, name in POOLED_METRICS.items()}


def _cell(key: str, value: Any) -> str:
    if key in ("name", "model"):
        return str(value)
    if key in _COUNTS:
        return str(int(value))
    return f"{float(value):.6f}"


def write_case_rows(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write a per-case table atomically.

    Args:
        rows: one mapping per case with the keys of :data:`CASE_COLUMNS` (as :func:`case_metrics` returns them,
            plus ``name``), and ``model`` in every row of a table of several models.
        path: the CSV file.

    Returns:
        The path written.

    Raises:
        KeyError: naming the first row and key that is missing.
    """
    model = ["model"] if rows and "model" in rows[0] else []
    keys, header = model + list(CASE_COLUMNS.values()), model + list(CASE_COLUMNS)
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise KeyError(f"per-case row {i} ({row.get('name', '?')}) for {path} has no {', '.join(missing)}")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([_cell(k, row[k]) for k in keys] for row in rows)

    return atomic_write(path, write)


def read_case_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a per-case table written by :func:`write_case_rows`.

    Args:
        path: the CSV file.

    Returns:
        One row per case with the keys of :func:`case_metrics` plus ``name`` (and ``model`` when the file has it);
        a non-finite HD95 (an empty mask) becomes NaN, left out of its mean.

    Raises:
        KeyError: naming the file and a missing column.
        ValueError: when the file has no cases.
    """
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {"model": raw["model"]} if "model" in raw else {}
            for column, key in CASE_COLUMNS.items():
                if column not in raw:
                    raise KeyError(f"{path} has no column {column!r} (made by an older version?)")
                if key == "name":
                    row[key] = raw[column]
                    continue
                value = float(raw[column])
                row[key] = value if math.isfinite(value) else float("nan")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no cases")
    return rows
