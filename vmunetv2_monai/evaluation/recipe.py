"""Results recipe: split, train each model with the bundle under one wall-clock budget, predict the test images
at their original resolution, score them and write the report folder.

Prediction runs the bundle's ``inference.json`` with the recipe's overrides (``spatial_mode resize``, hence
``inference_mode resize``): each whole image is resized to the training ``image_size``, and the logits are
upsampled bilinearly to the original size before the 0.5 threshold, i.e. the model sees the field of view it was
trained on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Events
from ignite.handlers import TimeLimit
from monai.bundle import ConfigWorkflow

from ..handlers.budget import FitEpochsToBudget
from .figures import pick_cases, plot_learning_curves, plot_overlay_grid
from .folders import score_predictions, write_metrics_csv
from .report import format_report
from .stats import bootstrap_summary

__all__ = ["evaluate_models", "predict_with_bundle", "read_tensorboard_curves", "train_with_budget"]

logger = logging.getLogger(__name__)


def _configs(bundle_dir: str | os.PathLike, *names: str) -> list[str]:
    return [str(Path(bundle_dir) / "configs" / f"{n}.json") for n in names]


def _workflow(bundle_dir: str | os.PathLike, names: Sequence[str], kind: str, overrides: Mapping[str, Any]):
    configs = Path(bundle_dir) / "configs"
    return ConfigWorkflow(
        config_file=_configs(bundle_dir, *names),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=kind,
        **overrides,
    )


def train_with_budget(
    bundle_dir: str | os.PathLike, overrides: Mapping[str, Any], time_limit_s: float | None
) -> dict[str, float]:
    """Run the bundle's training with ``overrides``. With ``time_limit_s``, the epoch count and the cosine
    schedule are fitted to the budget after two epochs (:class:`FitEpochsToBudget`) and ignite's ``TimeLimit``
    stops the run at the budget in any case. Data caching (``cache_rate``) happens before the clock starts.

    Returns ``{"epochs", "train_wall_s", "best_val_mean_dice", "best_epoch"}``.
    """
    wf = _workflow(bundle_dir, ("common", "train"), "train", overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    if time_limit_s is not None:
        FitEpochsToBudget(time_limit_s, wf.parser.get_parsed_content("lr_scheduler")).attach(trainer)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(max(1, int(time_limit_s))))
    start = time.perf_counter()
    wf.run()
    wall = time.perf_counter() - start
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    if not os.path.exists(wf.parser.get_parsed_content("ckpt_path")):
        # The budget ended the first epoch before any validation: validate once so a best checkpoint exists.
        logger.info("no validation finished within the budget; validating the current weights once")
        evaluator.run(trainer.state.epoch)
    wf.finalize()
    return {
        "epochs": int(trainer.state.epoch),
        "train_wall_s": round(wall, 1),
        "best_val_mean_dice": round(float(evaluator.state.best_metric), 4),
        "best_epoch": int(evaluator.state.best_metric_epoch),
    }


def predict_with_bundle(
    bundle_dir: str | os.PathLike,
    overrides: Mapping[str, Any],
    items: Sequence[Mapping[str, str]],
    out_dir: str | os.PathLike,
) -> None:
    """Run the bundle's ``inference.json`` on ``items`` (dicts with ``image`` and ``name``) with the checkpoint
    at ``ckpt_path`` and ``overrides`` (batch size 1: the images differ in size): writes
    ``<out_dir>/<name>_mask.png`` (0/255, original size)."""
    data = [{"image": it["image"], "name": it["name"]} for it in items]
    wf = _workflow(bundle_dir, ("common", "inference"), "infer",
                   {**overrides, "datalist": data, "pred_dir": str(out_dir), "overlay": False, "batch_size": 1})
    wf.initialize()
    wf.run()
    wf.finalize()


def read_tensorboard_curves(log_dir: str | os.PathLike, epoch_length: int) -> dict[str, list[tuple[float, float]]]:
    """``train_loss`` (per iteration, x in epochs) and every ``val_*`` scalar (per epoch) from a TensorBoard dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.fspath(log_dir))
    acc.Reload()
    curves: dict[str, list[tuple[float, float]]] = {}
    for tag in acc.Tags().get("scalars", []):
        if tag == "train_loss":
            curves[tag] = [(e.step / max(1, epoch_length), e.value) for e in acc.Scalars(tag)]
        elif tag.startswith("val_") and tag != "val_hd95":
            curves[tag] = [(float(e.step), e.value) for e in acc.Scalars(tag)]
    return curves


def evaluate_models(
    test_items: Sequence[Mapping[str, str]],
    pred_dirs: Mapping[str, str | os.PathLike],
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    runs: Mapping[str, Mapping[str, object]],
    report_dir: str | os.PathLike,
    title: str,
    notes: str,
    n_boot: int = 2000,
) -> dict[str, dict[str, dict[str, float]]]:
    """Score every model's predictions and write ``metrics.csv``, ``learning_curves.png``, ``overlays.png`` and
    ``report.md`` in ``report_dir``; returns the bootstrap summaries per model."""
    report_dir = Path(report_dir)
    all_rows, summaries = [], {}
    for model, pred_dir in pred_dirs.items():
        rows = score_predictions(test_items, pred_dir)
        summaries[model] = bootstrap_summary(rows, n_boot=n_boot)
        all_rows += [{"model": model, **r} for r in rows]
    write_metrics_csv(all_rows, report_dir / "metrics.csv")
    if any(curves.values()):
        plot_learning_curves(curves, report_dir / "learning_curves.png")
    first = next(iter(pred_dirs))
    picked = pick_cases([r for r in all_rows if r["model"] == first])
    by_name = {it["name"]: it for it in test_items}
    plot_overlay_grid({k: by_name[v] for k, v in picked.items()}, pred_dirs, report_dir / "overlays.png")
    format_report(title, summaries, runs, notes + f"\n\nOverlay cases are ranked by {first}'s per-image Dice.",
                  report_dir / "report.md")
    logger.info("report written to %s", report_dir / "report.md")
    return summaries
