"""Atomic checkpoint saving for ignite engines (MONAI's CheckpointSaver writes in place, with ``atomic=False``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import is_scalar

from .atomic import atomic_write

__all__ = ["AtomicCheckpointSaver"]

logger = logging.getLogger(__name__)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class AtomicCheckpointSaver:
    """Save ``save_dict`` state dicts to ``save_dir/filename`` atomically.

    With ``key_metric_name`` set (attach to an evaluator) it saves when that metric improves ("best"); without it
    (attach to a trainer) it saves every ``interval`` epochs, overwriting one file ("latest", for resume).
    A one-entry ``save_dict`` is saved as the raw state dict, so ``models/model.pt`` loads straight into the
    network. Everything saved loads with ``torch.load(weights_only=True)``. The saver has a state dict (its best
    score) so that a "latest" checkpoint can carry it across a resume.

    Args:
        save_dir: output folder.
        save_dict: name -> object with ``state_dict()`` (DataParallel/DDP wrappers are unwrapped).
        filename: file name inside ``save_dir``.
        key_metric_name: metric in ``engine.state.metrics`` to maximise; None saves every ``interval`` epochs.
        interval: epochs between interval saves.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "model.pt",
        key_metric_name: str | None = None,
        interval: int = 1,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.key_metric_name = key_metric_name
        self.interval = interval
        self.best_metric = float("-inf")

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_metric = float(state["best_metric"])

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        if self.key_metric_name is None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self._save)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_better)

    def _payload(self) -> Any:
        states = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
        return next(iter(states.values())) if len(states) == 1 else states

    def _save(self, engine: Engine) -> None:
        payload = self._payload()
        atomic_write(self.path, lambda tmp: torch.save(payload, tmp))
        logger.info("saved %s (epoch %d)", self.path, engine.state.epoch)

    def _save_if_better(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.key_metric_name)
        if value is None or not is_scalar(value):
            raise KeyError(f"key metric {self.key_metric_name!r} not in the engine's scalar metrics")
        value = float(value)
        if value != value or value <= self.best_metric:  # NaN or not better
            return
        self.best_metric = value
        self._save(engine)
        logger.info("new best %s = %.4f", self.key_metric_name, value)
