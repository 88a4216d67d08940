"""Per-image and pooled metrics against hand-computed values; bootstrap intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vmunetv2_monai.evaluation import bootstrap_summary
from vmunetv2_monai.metrics import case_metrics, dice_score, pooled_metrics


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def test_case_metrics_by_hand() -> None:
    gt = _square(20, 5, 5, 4)  # 16 px
    pred = _square(20, 6, 5, 4)  # shifted one row: 12 overlap, 4 FP, 4 FN
    r = case_metrics(pred, gt)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (12, 4, 4, 400 - 20)
    assert r["dice"] == pytest.approx(24 / 32)
    assert r["iou"] == pytest.approx(12 / 20)
    assert r["hd95"] == pytest.approx(1.0)  # every boundary point is at most one row away


def test_empty_cases() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    both = case_metrics(empty, empty)
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and math.isnan(both["hd95"])
    missed = case_metrics(empty, _square(8, 2, 2, 2))
    assert missed["dice"] == 0.0 and missed["fn"] == 4 and math.isnan(missed["hd95"])
    assert dice_score(empty, empty) == 1.0 and dice_score(empty, _square(8, 2, 2, 2)) == 0.0
    assert dice_score(_square(20, 6, 5, 4), _square(20, 5, 5, 4)) == pytest.approx(24 / 32)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="does not match"):
        case_metrics(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_pooled_metrics_by_hand() -> None:
    rows = [{"tp": 10, "fp": 2, "fn": 3, "tn": 85}, {"tp": 0, "fp": 5, "fn": 0, "tn": 95}]
    p = pooled_metrics(rows)  # TP 10, FP 7, FN 3, TN 180
    assert p["pooled_dsc"] == pytest.approx(20 / 30)
    assert p["pooled_iou"] == pytest.approx(10 / 20)
    assert p["pooled_accuracy"] == pytest.approx(190 / 200)
    assert p["pooled_sensitivity"] == pytest.approx(10 / 13)
    assert p["pooled_specificity"] == pytest.approx(180 / 187)


def test_pooled_differs_from_per_image_mean() -> None:
    big = case_metrics(_square(40, 0, 0, 20), _square(40, 0, 0, 20))  # perfect, 400 px
    small = case_metrics(np.zeros((40, 40), bool), _square(40, 0, 0, 2))  # missed, 4 px
    assert (big["dice"] + small["dice"]) / 2 == pytest.approx(0.5)
    assert pooled_metrics([big, small])["pooled_dsc"] == pytest.approx(800 / 804)


def test_bootstrap_interval_contains_value_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(30):
        gt = _square(16, int(rng.integers(0, 8)), int(rng.integers(0, 8)), 6)
        pred = _square(16, int(rng.integers(0, 8)), int(rng.integers(0, 8)), 6)
        rows.append(case_metrics(pred, gt))
    a = bootstrap_summary(rows, n_boot=500, seed=3)
    b = bootstrap_summary(rows, n_boot=500, seed=3)
    assert a == b
    for name in ("dice", "iou", "pooled_dsc", "pooled_accuracy"):
        assert a[name]["low"] <= a[name]["value"] <= a[name]["high"], name
        assert a[name]["high"] > a[name]["low"], name
    assert a["dice"]["value"] == pytest.approx(np.mean([r["dice"] for r in rows]))


def test_bootstrap_of_identical_cases_has_zero_width() -> None:
    r = case_metrics(_square(10, 0, 0, 5), _square(10, 1, 1, 5))
    s = bootstrap_summary([r] * 5, n_boot=50)
    assert s["dice"]["low"] == pytest.approx(s["dice"]["high"])


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        bootstrap_summary([])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_summary([case_metrics(np.ones((2, 2), bool), np.ones((2, 2), bool))], n_boot=0)


def test_bundle_metrics_are_the_same_definition() -> None:
    """train.json's validation metrics (what evaluate.json writes to per_case.csv and summary.json) give
    case_metrics' and pooled_metrics' values, the empty-mask rule included."""
    import torch
    from monai.bundle import ConfigParser

    from vmunetv2_monai.metrics import POOLED_METRICS

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.json"))
    rng = np.random.default_rng(0)
    pairs = [(np.zeros((6, 7), bool), np.zeros((6, 7), bool)), (_square(7, 1, 1, 3)[:6], np.zeros((6, 7), bool)),
             (np.zeros((6, 7), bool), _square(7, 2, 2, 2)[:6])]
    pairs += [(rng.random((6, 7)) > 0.5, rng.random((6, 7)) > 0.4) for _ in range(3)]
    rows = [case_metrics(p, g) for p, g in pairs]
    preds = [torch.as_tensor(p, dtype=torch.float32)[None] for p, _ in pairs]
    labels = [torch.as_tensor(g, dtype=torch.float32)[None] for _, g in pairs]
    for metric_id, key in (("key_metric#val_mean_dice", "dice"), ("additional_metrics#val_mean_iou", "iou")):
        handler = parser.get_parsed_content(f"validate#{metric_id}")
        got = handler.metric_fn(y_pred=preds, y=labels).flatten().tolist()
        assert got == pytest.approx([r[key] for r in rows]), key
    pooled = pooled_metrics(rows)
    for key in POOLED_METRICS:
        metric = parser.get_parsed_content(f"validate#additional_metrics#val_{key}").metric_fn
        metric(y_pred=preds, y=labels)
        assert float(metric.aggregate()[0]) == pytest.approx(pooled[key]), key
