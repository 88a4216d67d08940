"""Evaluation outputs: a per-case CSV and a summary JSON, written atomically at the end of an evaluation run."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.utils import string_list_all_gather

from .atomic import atomic_write

__all__ = ["CaseReportWriter"]

logger = logging.getLogger(__name__)


def _names(batch) -> list[str]:
    """Case names of one batch: the ``name`` entries (collated list, or a list of decollated dicts)."""
    if isinstance(batch, dict):
        names = batch["name"]
        return [names] if isinstance(names, str) else list(names)
    return [item["name"] for item in batch]


class CaseReportWriter:
    """Write ``<output_dir>/per_case.csv`` (one row per case, one column per metric with ``save_details=True``)
    and ``<output_dir>/summary.json`` (every scalar metric of the run plus the case count).

    Args:
        output_dir: folder for the two files.
        per_case_metrics: metric names whose per-case values (``engine.state.metric_details``) go in the CSV;
            None takes every metric that has details.
        confusion_metric: a MONAI ``ConfusionMatrix`` metric whose per-case counts go in the CSV as columns
            ``tp, fp, tn, fn`` (summed over channels), so that pooled metrics and their intervals can be
            recomputed from the file.
    """

    def __init__(self, output_dir: str | os.PathLike, per_case_metrics: Sequence[str] | None = None,
                 confusion_metric: str | None = None) -> None:
        self.output_dir = os.fspath(output_dir)
        self.per_case_metrics = per_case_metrics
        self.confusion_metric = confusion_metric
        self._names: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._names = []

    def _collect(self, engine: Engine) -> None:
        self._names += _names(engine.state.batch)

    def _write(self, engine: Engine) -> None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            self._names = string_list_all_gather(self._names)  # a collective: every rank takes part
            if dist.get_rank() > 0:
                return
        details = getattr(engine.state, "metric_details", {}) or {}
        wanted = list(details) if self.per_case_metrics is None else list(self.per_case_metrics)
        columns: dict[str, list[float]] = {}
        for name in wanted:
            if name not in details:
                raise KeyError(f"no per-case values for metric {name!r}; is save_details=True on its handler?")
            values = torch.as_tensor(details[name]).float().reshape(len(self._names), -1).mean(dim=1)
            columns[name] = [float(v) for v in values]
        if self.confusion_metric is not None:
            if self.confusion_metric not in details:
                raise KeyError(f"no per-case values for metric {self.confusion_metric!r}; is it a ConfusionMatrix "
                               "with save_details=True?")
            counts = torch.as_tensor(details[self.confusion_metric]).float().reshape(len(self._names), -1, 4).sum(1)
            for i, name in enumerate(("tp", "fp", "tn", "fn")):
                columns[name] = [float(v) for v in counts[:, i]]

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["name", *columns])
                for i, case in enumerate(self._names):
                    writer.writerow([case, *(f"{columns[m][i]:.6f}" for m in columns)])

        summary = {"num_cases": len(self._names)}
        for key, value in engine.state.metrics.items():
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                number = float(value)
                summary[key] = None if math.isnan(number) else number
        csv_path = atomic_write(os.path.join(self.output_dir, "per_case.csv"), write_csv)
        def write_json(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=2)

        json_path = atomic_write(os.path.join(self.output_dir, "summary.json"), write_json)
        logger.info("wrote %s and %s (%d cases)", csv_path, json_path, len(self._names))
