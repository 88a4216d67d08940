"""Fit a training run to a wall-clock budget: shorten ``max_epochs`` and the cosine schedule to what fits."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from ignite.engine import Engine, Events

__all__ = ["FitEpochsToBudget"]

logger = logging.getLogger(__name__)


class FitEpochsToBudget:
    """After ``calibrate_epoch`` epochs, set the trainer's ``max_epochs`` to the number of epochs that fit in
    ``budget_s`` seconds at the last epoch's pace (training + validation), and the scheduler's ``T_max`` to the
    same number, so that a cosine schedule anneals fully inside the budget instead of being cut off at a high
    learning rate. Never raises ``max_epochs``. Pair it with ignite's ``TimeLimit`` as a hard stop.

    Args:
        budget_s: wall-clock budget in seconds, counted from the start of the run.
        lr_scheduler: a scheduler with a ``T_max`` attribute (e.g. ``CosineAnnealingLR``), or None.
        calibrate_epoch: epoch after which the pace is measured (the first epoch carries one-off costs).
        clock: time source (seconds), replaceable in tests.
    """

    def __init__(
        self,
        budget_s: float,
        lr_scheduler: object | None = None,
        calibrate_epoch: int = 2,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        if calibrate_epoch < 1:
            raise ValueError(f"calibrate_epoch must be >= 1, got {calibrate_epoch}")
        if lr_scheduler is not None and not hasattr(lr_scheduler, "T_max"):
            raise ValueError(f"lr_scheduler {type(lr_scheduler).__name__} has no T_max to fit to the budget")
        self.budget_s = float(budget_s)
        self.lr_scheduler = lr_scheduler
        self.calibrate_epoch = calibrate_epoch
        self.clock = clock
        self._start = 0.0
        self._epoch_start = 0.0
        self.fitted_epochs: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=self.calibrate_epoch), self._fit)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = self.clock()

    def _fit(self, engine: Engine) -> None:
        now = self.clock()
        pace = max(now - self._epoch_start, 1e-9)
        remaining = self.budget_s - (now - self._start)
        fitted = engine.state.epoch + max(0, math.floor(remaining / pace))
        fitted = min(int(engine.state.max_epochs), fitted)
        self.fitted_epochs = fitted
        engine.state.max_epochs = fitted
        if self.lr_scheduler is not None:
            self.lr_scheduler.T_max = fitted
        logger.info("budget %.0f s at %.1f s/epoch: training for %d epochs (schedule T_max = %d)",
                    self.budget_s, pace, fitted, fitted)
