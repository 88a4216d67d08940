"""Fit a training run to a wall-clock budget: the epoch count and a cosine schedule follow the measured pace."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import CosineAnnealingLR

__all__ = ["FitEpochsToBudget"]

logger = logging.getLogger(__name__)


class FitEpochsToBudget:
    """After every epoch from ``calibrate_epoch`` on, estimate how many epochs fit in ``budget_s`` seconds at the
    mean pace of the epochs after the first (training + validation; the first carries one-off costs), set the
    trainer's ``max_epochs`` to that (never above the configured value, never below the current epoch), and set
    the learning rate of the next epoch from the closed-form cosine over the fitted count, so that the schedule
    anneals fully inside the budget instead of being cut off at a high rate. Run it after the bundle's
    ``LrScheduleHandler`` (attach it later); pair it with ignite's ``TimeLimit`` as a hard stop.

    Args:
        budget_s: wall-clock budget in seconds, counted from the start of the run.
        lr_scheduler: the run's ``CosineAnnealingLR`` (its ``base_lrs`` and ``eta_min`` are used), or None.
        calibrate_epoch: first epoch after which the pace is measured (>= 2).
        clock: time source (seconds), replaceable in tests.
    """

    def __init__(
        self,
        budget_s: float,
        lr_scheduler: CosineAnnealingLR | None = None,
        calibrate_epoch: int = 2,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        if calibrate_epoch < 2:
            raise ValueError(f"calibrate_epoch must be >= 2, got {calibrate_epoch}")
        if lr_scheduler is not None and not isinstance(lr_scheduler, CosineAnnealingLR):
            raise ValueError(f"lr_scheduler must be a CosineAnnealingLR, got {type(lr_scheduler).__name__}")
        self.budget_s = float(budget_s)
        self.lr_scheduler = lr_scheduler
        self.calibrate_epoch = calibrate_epoch
        self.clock = clock
        self._start = 0.0
        self._first_epoch_end = 0.0
        self._max_epochs = 0
        self.fitted_epochs: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start = self.clock()
        self._max_epochs = int(engine.state.max_epochs)

    def _epoch_completed(self, engine: Engine) -> None:
        now, epoch = self.clock(), engine.state.epoch
        if epoch == 1:
            self._first_epoch_end = now
        if epoch < self.calibrate_epoch:
            return
        pace = max((now - self._first_epoch_end) / (epoch - 1), 1e-9)
        remaining = self.budget_s - (now - self._start)
        fitted = min(self._max_epochs, epoch + max(0, math.floor(remaining / pace)))
        if fitted != self.fitted_epochs:
            logger.info("budget %.0f s, %.1f s/epoch after epoch %d: training for %d epochs",
                        self.budget_s, pace, epoch, fitted)
        self.fitted_epochs = engine.state.max_epochs = fitted
        if self.lr_scheduler is not None:
            self.lr_scheduler.T_max = fitted
            sched, cos = self.lr_scheduler, (1.0 + math.cos(math.pi * min(epoch, fitted) / fitted)) / 2.0
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
                group["lr"] = sched.eta_min + (base - sched.eta_min) * cos
