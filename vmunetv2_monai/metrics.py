"""Per-image and pooled binary segmentation metrics.

Two conventions are reported side by side, because the literature mixes them:

- per-image (PraNet family): Dice, IoU and HD95 of each image, then the mean over images;
- pooled (VM-UNet family, the official VM-UNetV2 code): one confusion matrix over all pixels of all images,
  then DSC = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), accuracy, sensitivity TP/(TP+FN), specificity TN/(TN+FP).

Empty cases: an image whose prediction and ground truth are both empty has Dice = IoU = 1; HD95 is undefined
(NaN) when either mask is empty and is left out of the HD95 mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

__all__ = ["POOLED_METRICS", "case_metrics", "pooled_metrics"]

POOLED_METRICS = ("pooled_dsc", "pooled_iou", "pooled_accuracy", "pooled_sensitivity", "pooled_specificity")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def case_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Metrics of one binary ``(H, W)`` prediction against its ground truth (same shape).

    Returns the confusion counts ``tp, fp, fn, tn`` and ``dice``, ``iou``, ``hd95`` (pixels).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    p, g = pred.astype(bool), gt.astype(bool)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    tn = int(p.size - tp - fp - fn)
    empty = tp + fp + fn == 0
    dice = 1.0 if empty else 2 * tp / (2 * tp + fp + fn)
    iou = 1.0 if empty else tp / (tp + fp + fn)
    if p.any() and g.any():
        hd = compute_hausdorff_distance(
            torch.from_numpy(p)[None, None].float(), torch.from_numpy(g)[None, None].float(), percentile=95
        )
        hd95 = float(hd.item())
    else:
        hd95 = float("nan")
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "dice": dice, "iou": iou, "hd95": hd95}


def pooled_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Pooled confusion-matrix metrics over the rows' ``tp, fp, fn, tn`` counts (see module docstring)."""
    tp = fp = fn = tn = 0
    for r in rows:
        tp, fp, fn, tn = tp + r["tp"], fp + r["fp"], fn + r["fn"], tn + r["tn"]
    return {
        "pooled_dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "pooled_iou": _ratio(tp, tp + fp + fn),
        "pooled_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "pooled_sensitivity": _ratio(tp, tp + fn),
        "pooled_specificity": _ratio(tn, tn + fp),
    }
