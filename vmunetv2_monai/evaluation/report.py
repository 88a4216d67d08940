"""Markdown report of a results run: both metric conventions, mean and 95 % bootstrap interval per model."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from ..files import atomic_write

__all__ = ["TABLE_METRICS", "format_report"]

TABLE_METRICS = (
    ("dice", "mean Dice (per image)"),
    ("iou", "mean IoU (per image)"),
    ("hd95", "mean HD95, px (per image)"),
    ("pooled_dsc", "DSC (pooled)"),
    ("pooled_iou", "IoU (pooled)"),
    ("pooled_accuracy", "accuracy (pooled)"),
    ("pooled_sensitivity", "sensitivity (pooled)"),
    ("pooled_specificity", "specificity (pooled)"),
)


def _cell(stat: Mapping[str, float]) -> str:
    if math.isnan(stat["value"]):
        return "n/a"
    digits = 2 if abs(stat["value"]) >= 10 else 4
    return f"{stat['value']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def format_report(
    title: str,
    summaries: Mapping[str, Mapping[str, Mapping[str, float]]],
    runs: Mapping[str, Mapping[str, object]],
    notes: str,
    path: str | os.PathLike,
) -> Path:
    """Write ``report.md``: a metric table (rows = metrics, columns = models, ``value [low, high]``), a table of
    the runs' settings, free-text notes, and links to the figures.

    Args:
        title: the report's title.
        summaries: per model, ``{metric: {"value", "low", "high"}}``
            (:func:`~vmunetv2_monai.evaluation.stats.bootstrap_summary`).
        runs: per model, its settings as key/value pairs.
        notes: free text.
        path: the Markdown file.

    Returns:
        The path written.
    """
    models = list(summaries)
    lines = [f"# {title}", "", "Metrics on the test images at their original resolution; "
             "brackets are 95 % bootstrap intervals over images (2000 resamples).", ""]
    lines += ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, label in TABLE_METRICS:
        lines.append(f"| {label} | " + " | ".join(_cell(summaries[m][key]) for m in models) + " |")
    keys = sorted({k for r in runs.values() for k in r})
    lines += ["", "## Runs", "", "| setting | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(runs[m].get(k, "")) for m in models) + " |")
    lines += ["", "## Notes", "", notes.strip(), "", "## Figures", "",
              "- learning curves: `learning_curves.png`", "- best / median / worst test cases: `overlays.png`",
              "- per-image metrics: `metrics.csv`", ""]
    text = "\n".join(lines)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
