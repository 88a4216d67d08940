"""Report figures: learning curves and a best / median / worst overlay grid (PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..files import atomic_write  # noqa: E402
from ..handlers.predictions import overlay_contour  # noqa: E402
from .folders import read_mask  # noqa: E402

__all__ = ["pick_cases", "plot_learning_curves", "plot_overlay_grid"]


def plot_learning_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    path: str | os.PathLike,
    xlabel: str = "epoch",
) -> Path:
    """Plot learning curves: one panel per series name (e.g. ``train_loss``, ``val_mean_dice``), one line per model.

    Args:
        curves: ``curves[model][series]`` is a list of ``(x, value)`` pairs.
        path: the PNG file.
        xlabel: names x (epochs, CPU seconds).

    Returns:
        The path written.

    Raises:
        ValueError: when there is no series to plot.
    """
    series = sorted({s for per_model in curves.values() for s in per_model})
    if not series:
        raise ValueError("no learning-curve data to plot")
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), squeeze=False)
    for ax, name in zip(axes[0], series, strict=True):
        for model, per_model in curves.items():
            if per_model.get(name):
                steps, values = zip(*per_model[name], strict=True)
                ax.plot(steps, values, marker=".", label=model)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if len(curves) <= 6 else 6)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def pick_cases(rows: Sequence[Mapping[str, float | str]], metric: str = "dice") -> dict[str, str]:
    """Names of the best, median and worst case by ``metric`` (ties broken by name).

    Args:
        rows: per-case rows with ``name`` and ``metric``.
        metric: the row key to rank by (higher is better).

    Returns:
        ``{"best" | "median" | "worst": case name}``.

    Raises:
        ValueError: when there are no rows.
    """
    if not rows:
        raise ValueError("no cases to pick from")
    ranked = sorted(rows, key=lambda r: (-float(r[metric]), str(r["name"])))
    names = [str(r["name"]) for r in ranked]
    return {"best": names[0], "median": names[len(names) // 2], "worst": names[-1]}


def plot_overlay_grid(
    cases: Mapping[str, Mapping[str, str]], pred_dirs: Mapping[str, str | os.PathLike], path: str | os.PathLike,
    suffix: str = "_mask.png",
) -> Path:
    """Plot a grid of overlays: rows = cases; columns = image, ground-truth contour (green) and each model's
    predicted contour (red).

    Args:
        cases: row title -> data-list item (``name``, ``image``, ``label``), e.g. ``{"best": item, ...}``.
        pred_dirs: column title -> folder of that model's predicted masks.
        path: the PNG file.
        suffix: file name of a prediction after the item's name.

    Returns:
        The path written.
    """
    ncols = 2 + len(pred_dirs)
    fig, axes = plt.subplots(len(cases), ncols, figsize=(3.2 * ncols, 3.0 * len(cases)), squeeze=False)
    for row, (title, item) in zip(axes, cases.items(), strict=True):
        with Image.open(item["image"]) as img:
            rgb = np.asarray(img.convert("RGB"))
        gt = read_mask(item["label"])
        panels = [("image", rgb), ("ground truth", overlay_contour(rgb, gt, color=(0, 255, 0)))]
        for model, pred_dir in pred_dirs.items():
            pred = read_mask(Path(pred_dir) / f"{item['name']}{suffix}")
            panels.append((model, overlay_contour(rgb, pred)))
        for ax, (label, panel) in zip(row, panels, strict=True):
            ax.imshow(panel)
            ax.set_title(f"{title}: {label}" if label == "image" else label, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
