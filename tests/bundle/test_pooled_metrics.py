"""The bundle's pooled metrics (MONAI ConfusionMatrix, compute_sample=False, reduction sum) equal the paper's
definition: one confusion matrix over all pixels of all images."""

from __future__ import annotations

import torch
from monai.metrics import ConfusionMatrixMetric


def test_pooled_confusion_metrics_match_one_matrix_over_all_pixels():
    g = torch.Generator().manual_seed(0)
    preds = [(torch.rand(1, 1, 8, 9, generator=g) > p).float() for p in (0.2, 0.5, 0.9)]
    labels = [(torch.rand(1, 1, 8, 9, generator=g) > p).float() for p in (0.3, 0.6, 0.8)]
    p, t = torch.cat([x.flatten() for x in preds]), torch.cat([x.flatten() for x in labels])
    tp, fp = float((p * t).sum()), float((p * (1 - t)).sum())
    fn, tn = float(((1 - p) * t).sum()), float(((1 - p) * (1 - t)).sum())
    expected = {
        "f1 score": 2 * tp / (2 * tp + fp + fn),
        "threat score": tp / (tp + fp + fn),
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
    }
    for name, value in expected.items():
        metric = ConfusionMatrixMetric(include_background=True, metric_name=name, compute_sample=False, reduction="sum")
        for pr, lb in zip(preds, labels, strict=True):
            metric(y_pred=pr, y=lb)
        got = float(metric.aggregate()[0])
        assert abs(got - value) < 1e-6, (name, got, value)
    per_image_dice = sum(
        float(2 * (a * b).sum() / (a.sum() + b.sum())) for a, b in zip(preds, labels, strict=True)
    ) / len(preds)
    assert abs(per_image_dice - expected["f1 score"]) > 1e-4  # pooled and per-image means really differ here
