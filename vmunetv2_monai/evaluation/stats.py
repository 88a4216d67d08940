"""Bootstrap confidence intervals over images for per-image means and pooled metrics."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..metrics import pooled_metrics

__all__ = ["PER_IMAGE_METRICS", "bootstrap_summary", "mean_interval"]

PER_IMAGE_METRICS = ("dice", "iou", "hd95")


def bootstrap_summary(
    rows: Sequence[Mapping[str, float]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Bootstrap intervals over images of the per-image means (NaN-aware) and the pooled metrics.

    Images are resampled with replacement ``n_boot`` times (seeded); pooled metrics are recomputed from the
    resampled images' confusion counts; the interval is the percentile interval at ``level``.

    Args:
        rows: one row per image, as :func:`~vmunetv2_monai.metrics.case_metrics` returns them.
        n_boot: number of resamples.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``{metric: {"value", "low", "high"}}`` for ``dice``, ``iou``, ``hd95`` and the pooled metrics.

    Raises:
        ValueError: for no rows, ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    if not rows:
        raise ValueError("bootstrap_summary needs at least one image")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    counts = np.array([[r["tp"], r["fp"], r["fn"], r["tn"]] for r in rows], dtype=np.float64)
    per_image = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in PER_IMAGE_METRICS}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(n_boot, len(rows)))
    alpha = (1 - level) / 2
    out: dict[str, dict[str, float]] = {}
    for name, values in per_image.items():
        with warnings.catch_warnings():  # resamples made only of NaN (e.g. HD95 of empty masks) give NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            boots = np.nanmean(values[idx], axis=1) if np.isfinite(values).any() else np.full(n_boot, np.nan)
        out[name] = _interval(float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"), boots, alpha)
    pooled_boot = [pooled_metrics(_as_rows(counts[i].sum(axis=0, keepdims=True))) for i in idx]
    for name, value in pooled_metrics(rows).items():
        out[name] = _interval(value, np.array([b[name] for b in pooled_boot]), alpha)
    return out


def mean_interval(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """The mean of per-image values and its percentile bootstrap interval.

    Args:
        values: one value per image.
        n_boot: number of resamples.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``{"value", "low", "high"}``.

    Raises:
        ValueError: when ``values`` is empty.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("mean_interval needs at least one value")
    idx = np.random.default_rng(seed).integers(0, data.size, size=(n_boot, data.size))
    return _interval(float(data.mean()), data[idx].mean(axis=1), (1 - level) / 2)


def _as_rows(counts: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(("tp", "fp", "fn", "tn"), c, strict=True)) for c in counts]


def _interval(value: float, boots: np.ndarray, alpha: float) -> dict[str, float]:
    finite = boots[np.isfinite(boots)]
    if finite.size == 0:
        return {"value": value, "low": float("nan"), "high": float("nan")}
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return {"value": value, "low": float(low), "high": float(high)}
