"""Score a folder of predicted masks against the ground truth of a data list, at the original resolution."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.transforms import binarize_mask, pil_standard_mode
from ..handlers.atomic import atomic_write
from .metrics import case_metrics

__all__ = ["CSV_COLUMNS", "read_mask", "score_predictions", "write_metrics_csv"]

CSV_COLUMNS = ("name", "tp", "fp", "fn", "tn", "dice", "iou", "hd95")


def read_mask(path: str | os.PathLike, threshold: float = 127.0) -> np.ndarray:
    """``(H, W)`` boolean mask of a PNG/JPG file, read with the bundle's mask rule
    (:func:`~vmunetv2_monai.data.transforms.binarize_mask`, ``threshold`` on the 8-bit scale)."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(pil_standard_mode(img))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err
    chw = torch.as_tensor(arr.astype(np.float32)).reshape(*arr.shape[:2], -1).permute(2, 0, 1)
    return binarize_mask(chw, threshold, source=str(path))[0].numpy()


def score_predictions(
    items: Sequence[Mapping[str, str]], pred_dir: str | os.PathLike, suffix: str = "_mask.png"
) -> list[dict[str, float | str]]:
    """One metrics row per data-list item (``name``, ``label``), reading ``<pred_dir>/<name><suffix>``.

    Raises ``FileNotFoundError`` naming a missing prediction and ``ValueError`` when a prediction's size differs
    from its ground truth (predictions must be at the original resolution).
    """
    rows: list[dict[str, float | str]] = []
    for item in items:
        pred_path = Path(pred_dir) / f"{item['name']}{suffix}"
        if not pred_path.is_file():
            raise FileNotFoundError(f"no prediction for {item['name']}: {pred_path} is missing")
        pred, gt = read_mask(pred_path), read_mask(item["label"])
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {item['label']} is "
                f"{gt.shape[1]}x{gt.shape[0]}: predictions must be at the original resolution"
            )
        rows.append({"name": item["name"], **case_metrics(pred, gt)})
    return rows


def write_metrics_csv(rows: Sequence[Mapping[str, float | str]], path: str | os.PathLike) -> Path:
    """Write rows with :data:`CSV_COLUMNS` (plus a ``model`` column when present) atomically."""
    columns = (["model"] if rows and "model" in rows[0] else []) + list(CSV_COLUMNS)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)
