"""Evaluation outputs: a per-case CSV and a summary JSON, written atomically at the end of an evaluation run."""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.utils import string_list_all_gather

from ..files import write_json
from ..metrics import write_case_rows

__all__ = ["CaseReportWriter"]

logger = logging.getLogger(__name__)


def _names(batch: dict | list[dict]) -> list[str]:
    """Case names of one batch: the ``name`` entries (collated list, or a list of decollated dicts)."""
    if isinstance(batch, dict):
        names = batch["name"]
        return [names] if isinstance(names, str) else list(names)
    return [item["name"] for item in batch]


class CaseReportWriter:
    """Write ``<output_dir>/per_case.csv`` (one row per case, the project's one per-case table, see
    :func:`~vmunetv2_monai.metrics.write_case_rows`) and ``<output_dir>/summary.json`` (every scalar metric of the
    run plus the case count).

    Args:
        output_dir: folder for the two files.
        dice_metric: the metric (``save_details=True``, as MONAI's metric handlers default) whose per-case values
            are the Dice column.
        iou_metric: the same for the IoU column.
        hd95_metric: the same for the HD95 column.
        confusion_metric: a MONAI ``ConfusionMatrix`` metric whose per-case counts (summed over channels) are the
            ``tp, fp, tn, fn`` columns, so that pooled metrics and their intervals can be recomputed from the file.
    """

    def __init__(self, output_dir: str | os.PathLike, dice_metric: str = "val_mean_dice",
                 iou_metric: str = "val_mean_iou", hd95_metric: str = "val_hd95",
                 confusion_metric: str = "val_pooled_dsc") -> None:
        self.output_dir = os.fspath(output_dir)
        self.case_metrics = {"dice": dice_metric, "iou": iou_metric, "hd95": hd95_metric}
        self.confusion_metric = confusion_metric
        self._names: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Collect case names every iteration and write the files at the end of each epoch.

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._names = []

    def _collect(self, engine: Engine) -> None:
        self._names += _names(engine.state.batch)

    def _details(self, details: dict, name: str) -> torch.Tensor:
        if name not in details:
            raise KeyError(f"no per-case values for metric {name!r}; is it a metric of this evaluator, with "
                           "save_details=True?")
        return torch.as_tensor(details[name]).float().reshape(len(self._names), -1)

    def _write(self, engine: Engine) -> None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            self._names = string_list_all_gather(self._names)  # a collective: every rank takes part
            if dist.get_rank() > 0:
                return
        details = getattr(engine.state, "metric_details", {}) or {}
        columns = {key: self._details(details, name).mean(dim=1) for key, name in self.case_metrics.items()}
        counts = self._details(details, self.confusion_metric).reshape(len(self._names), -1, 4).sum(1)
        columns.update({key: counts[:, i] for i, key in enumerate(("tp", "fp", "tn", "fn"))})  # MONAI's order
        rows = [{"name": case, **{key: float(values[i]) for key, values in columns.items()}}
                for i, case in enumerate(self._names)]
        summary: dict[str, float | int | None] = {"num_cases": len(self._names)}
        for key, value in engine.state.metrics.items():
            if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                number = float(value)
                summary[key] = None if math.isnan(number) else number
        csv_path = write_case_rows(rows, os.path.join(self.output_dir, "per_case.csv"))
        json_path = write_json(os.path.join(self.output_dir, "summary.json"), summary)
        logger.info("wrote %s and %s (%d cases)", csv_path, json_path, len(self._names))
