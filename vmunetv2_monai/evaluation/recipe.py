"""Results recipe pieces: bundle training (full recipe), bundle overrides of a CPU-recipe setting, prediction of
the test images at their original resolution with the bundle's inference config, scoring and the report folder.

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

from monai.bundle import ConfigWorkflow

from ..training.trainer import TrainConfig
from .figures import pick_cases, plot_learning_curves, plot_overlay_grid
from .folders import score_predictions, write_metrics_csv
from .report import format_report
from .stats import bootstrap_summary

__all__ = ["bundle_overrides", "evaluate_models", "predict_with_bundle", "read_tensorboard_curves", "train_with_bundle"]

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


def train_with_bundle(bundle_dir: str | os.PathLike, overrides: Mapping[str, Any]) -> dict[str, float]:
    """Run the bundle's training with ``overrides`` (the full recipe; CPU-second budgets are
    :func:`vmunetv2_monai.training.train_for_budget`'s).

    Returns ``{"epochs", "train_wall_s", "best_val_mean_dice", "best_epoch"}``.
    """
    wf = _workflow(bundle_dir, ("train",), "train", overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    wf.run()
    wall = time.perf_counter() - start
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    wf.finalize()
    return {
        "epochs": int(trainer.state.epoch),
        "train_wall_s": round(wall, 1),
        "best_val_mean_dice": round(float(evaluator.state.best_metric), 4),
        "best_epoch": int(evaluator.state.best_metric_epoch),
    }


def bundle_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The bundle config ids that reproduce ``cfg``'s network and preprocessing at inference."""
    common = {"image_size": [cfg.size, cfg.size], "spatial_mode": "resize", "normalization": cfg.norm}
    if cfg.model == "basicunet":
        return {**common, "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3,
                                          "out_channels": 1, "features": list(cfg.features), "dropout": cfg.dropout}}
    return {**common, "depths": list(cfg.depths), "dims": cfg.dims, "drop_path_rate": cfg.drop_path_rate,
            "keep_unused_stage": False}


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
    wf = _workflow(bundle_dir, ("inference",), "infer",
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
    xlabel: str = "epoch",
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
        plot_learning_curves(curves, report_dir / "learning_curves.png", xlabel=xlabel)
    first = next(iter(pred_dirs))
    picked = pick_cases([r for r in all_rows if r["model"] == first])
    by_name = {it["name"]: it for it in test_items}
    plot_overlay_grid({k: by_name[v] for k, v in picked.items()}, pred_dirs, report_dir / "overlays.png")
    format_report(title, summaries, runs, notes + f"\n\nOverlay cases are ranked by {first}'s per-image Dice.",
                  report_dir / "report.md")
    logger.info("report written to %s", report_dir / "report.md")
    return summaries
