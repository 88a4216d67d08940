"""Results recipe pieces, all through the bundle: the ``monai.bundle run`` command of a workflow with overrides,
training and evaluation runs, what a finished training left (``latest.pt``) and the report folder.

Training is ``train.json`` + a recipe config with the overrides; scoring is ``evaluate.json`` merged over the same
files (MONAI metrics on the test images at their original resolution, per-case CSV with confusion counts);
overlay figures use ``inference.json``. Nothing here trains, infers or scores by itself.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bundle.opener import Bundle
from ..checkpoints import read_checkpoint
from ..errors import check_config_files
from ..metrics import write_case_rows
from .figures import pick_cases, plot_learning_curves, plot_overlay_grid
from .report import format_report
from .stats import bootstrap_summary

__all__ = [
    "MODEL_OVERRIDES",
    "bundle_command",
    "check_finished",
    "evaluate_models",
    "overlay_cases",
    "parse_set",
    "read_training",
    "run_bundle",
]

logger = logging.getLogger(__name__)

#: Per model: the bundle overrides over a recipe config (kvasir_cpu.json, kvasir_full.json). The learning study of
#: 2026-11-30 found BasicUNet to learn fastest per CPU second at half width and without weight decay; VM-UNetV2's
#: settings are the recipe config's own.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "vmunetv2": {},
    "basicunet": {
        "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                        "features": [16, 16, 32, 64, 128, 16], "dropout": 0.0},
        "weight_decay": 0.0,
    },
}


def parse_set(items: list[str], model: str) -> dict[str, Any]:
    """The ``--set`` overrides that apply to one model.

    Args:
        items: ``["id=value", "model:id=value", ...]``.
        model: a key of :data:`MODEL_OVERRIDES`.

    Returns:
        ``{id: value}``; values are Python literals where they parse, strings otherwise.

    Raises:
        ValueError: naming an item that is not ``ID=VALUE`` or ``MODEL:ID=VALUE`` with a known model.
    """
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        only, colon, key = key.rpartition(":") if ":" in key.split("#")[0] else ("", "", key)
        if not sep or not key or (colon and only not in MODEL_OVERRIDES):
            raise ValueError(f"--set takes ID=VALUE or MODEL:ID=VALUE (MODEL one of {', '.join(MODEL_OVERRIDES)}), "
                             f"got {item!r}")
        if only and only != model:
            continue
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _cli_value(value: Any) -> str:
    # MONAI's command line drops a None value, so null is given as the expression "$None"
    return "$None" if value is None else value if isinstance(value, str) else repr(value)


def bundle_command(bundle_dir: str | os.PathLike, configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """The ``python -m monai.bundle run`` command of a workflow.

    Args:
        bundle_dir: the bundle folder.
        configs: config names in ``<bundle_dir>/configs``, merged in order.
        overrides: ``--id value`` pairs (Python literals, as MONAI's command line reads them; None as ``$None``).

    Returns:
        The command's argument list.
    """
    bundle = Bundle(bundle_dir)
    files = [str(path) for path in bundle.config_files(configs)]
    check_config_files(*files, bundle.metadata_path)  # MONAI would name no file
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(files),
           "--meta_file", str(bundle.metadata_path),
           "--logging_file", str(bundle.configs_dir / "logging.conf"), "--bundle_root", str(bundle.root)]
    for key, value in overrides.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def run_bundle(cmd: Sequence[str], log_path: str | os.PathLike, threads: int | None = None,
               wait: bool = True) -> subprocess.Popen:
    """Start a bundle run.

    Args:
        cmd: the command (from :func:`bundle_command`).
        log_path: file its output is appended to.
        threads: CPU threads (``OMP_NUM_THREADS``); None keeps the environment's.
        wait: wait for the run (see :func:`check_finished`); otherwise the caller waits on the returned process.

    Returns:
        The process.

    Raises:
        RuntimeError: with ``wait``, naming the log when the run fails.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
    if wait:
        check_finished(proc, log_path)
    return proc


def check_finished(proc: subprocess.Popen, log_path: str | os.PathLike) -> None:
    """Wait for a bundle run.

    Args:
        proc: the process (from :func:`run_bundle`).
        log_path: its log.

    Raises:
        RuntimeError: with the log's last line when the run failed.
    """
    if proc.wait() != 0:
        lines = [ln for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
        raise RuntimeError(f"bundle run failed (exit {proc.returncode}, log {log_path}): "
                           f"{lines[-1] if lines else 'no output'}")


def read_training(latest_path: str | os.PathLike) -> dict[str, Any]:
    """What a finished bundle training left in its ``latest.pt``.

    Args:
        latest_path: the training's ``latest.pt``.

    Returns:
        Iterations, epochs, iterations per epoch, CPU seconds spent, the validation history
        (``[cpu_s, iteration, val_mean_dice]`` rows) and the best validation score.
    """
    state = read_checkpoint(latest_path, what="training state")
    trainer, budget = state["trainer"], state["budget"]
    history = [list(row) for row in budget["history"]]
    best = max((row for row in history if not math.isnan(row[2])), key=lambda row: row[2], default=None)
    return {
        "iterations": int(trainer["iteration"]),
        "epochs": round(int(trainer["iteration"]) / max(1, int(trainer["epoch_length"])), 2),
        "epoch_length": int(trainer["epoch_length"]),
        "train_cpu_s": round(float(budget["used_cpu_s"]), 1),
        "best_val_mean_dice": round(best[2], 4) if best else float("nan"),
        "best_at_cpu_s": best[0] if best else float("nan"),
        "history": history,
    }


def evaluate_models(
    test_items: Sequence[Mapping[str, str]],
    case_rows: Mapping[str, Sequence[Mapping[str, Any]]],
    pred_dirs: Mapping[str, str | os.PathLike],
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    runs: Mapping[str, Mapping[str, object]],
    report_dir: str | os.PathLike,
    title: str,
    notes: str,
    n_boot: int = 2000,
    xlabel: str = "training CPU seconds",
) -> dict[str, dict[str, dict[str, float]]]:
    """Bootstrap every model's per-case rows and write the report folder.

    Args:
        test_items: the test data-list items (``name``, ``image``, ``label``).
        case_rows: per model, its per-case rows (:func:`~vmunetv2_monai.metrics.read_case_rows`).
        pred_dirs: per model, the folder of its predicted masks.
        curves: per model, learning-curve series (name -> ``[(x, value), ...]``).
        runs: per model, the settings for the report's run table.
        report_dir: the folder for ``metrics.csv``, ``learning_curves.png``, ``overlays.png`` (the cases
            :func:`overlay_cases` picks) and ``report.md``.
        title: the report's title.
        notes: free text for the report.
        n_boot: bootstrap resamples.
        xlabel: the learning curves' x axis.

    Returns:
        Per model, :func:`~vmunetv2_monai.evaluation.stats.bootstrap_summary` of its rows.
    """
    report_dir = Path(report_dir)
    summaries = {model: bootstrap_summary(rows, n_boot=n_boot) for model, rows in case_rows.items()}
    write_case_rows([{"model": m, **r} for m, rows in case_rows.items() for r in rows], report_dir / "metrics.csv")
    if any(curves.values()):
        plot_learning_curves(curves, report_dir / "learning_curves.png", xlabel=xlabel)
    by_name = {it["name"]: it for it in test_items}
    picked = overlay_cases(case_rows)
    plot_overlay_grid({k: by_name[v] for k, v in picked.items()}, pred_dirs, report_dir / "overlays.png")
    first = next(iter(case_rows))
    format_report(title, summaries, runs, notes + f"\n\nOverlay cases are ranked by {first}'s per-image Dice.",
                  report_dir / "report.md")
    logger.info("report written to %s", report_dir / "report.md")
    return summaries


def overlay_cases(case_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, str]:
    """Best, median and worst test case by the first model's per-image Dice.

    Args:
        case_rows: per model, its per-case rows.

    Returns:
        ``{"best" | "median" | "worst": case name}``.
    """
    return pick_cases(next(iter(case_rows.values())))
