"""Score a folder of predicted masks against the ground truth of a data list, at the original resolution."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.transforms import binarize_mask, pil_standard_mode
from ..metrics import case_metrics

__all__ = ["read_mask", "score_predictions"]


def read_mask(path: str | os.PathLike, threshold: float = 127.0) -> np.ndarray:
    """Read a mask file with the bundle's mask rule (:func:`~vmunetv2_monai.data.transforms.binarize_mask`).

    Args:
        path: a PNG/JPG mask.
        threshold: foreground above this value on the 8-bit scale.

    Returns:
        The ``(H, W)`` boolean mask.

    Raises:
        ValueError: naming the file when it cannot be read.
    """
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
    """Score every data-list item's prediction ``<pred_dir>/<name><suffix>`` with
    :func:`~vmunetv2_monai.metrics.case_metrics`.

    Args:
        items: data-list items with ``name`` and ``label`` (the ground-truth file).
        pred_dir: folder of the predicted masks.
        suffix: file name of a prediction after the item's name.

    Returns:
        One row per item: ``name`` and the metrics, as :func:`~vmunetv2_monai.metrics.write_case_rows` writes them.

    Raises:
        FileNotFoundError: naming a missing prediction.
        ValueError: when a prediction's size differs from its ground truth (predictions must be at the original
            resolution).
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

