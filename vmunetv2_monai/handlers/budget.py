"""Training budget for an ignite trainer: epochs, iterations, or seconds of the process's CPU time (or of wall time,
for GPUs), validation on that budget's clock, and a warm-up + cosine learning rate over the budget (so every run
anneals fully, whatever its length)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

__all__ = ["BUDGET_CLOCKS", "TrainingBudget", "WarmupCosineLR"]

logger = logging.getLogger(__name__)

BUDGET_CLOCKS = {"process": (time.process_time, "CPU s"), "wall": (time.perf_counter, "wall s")}
"""The clocks a seconds budget can count, with the unit its log lines name: the process's CPU time (fair under
load with one thread per process) or wall time (for GPUs, where the process mostly waits on the device)."""


class TrainingBudget:
    """How long a trainer trains, and when it validates.

    With ``cpu_seconds`` set, training stops once the process has spent that many CPU seconds
    (``time.process_time``) on training iterations: data loading, augmentation, forward and backward passes and
    the trainer's own handlers count, the validation runs this handler starts do not, so a run's length does not
    depend on other load on the machine (use one thread per process for a fair count). The validator runs every
    ``val_every_cpu_s`` budget seconds and once more when the budget is spent; ``max_epochs`` is then only an upper
    bound (a run that ends before its budget is validated at its last iteration). With ``clock="wall"`` the same
    budget counts wall-clock seconds of training iterations instead (validation still excluded): the fair measure
    on a GPU, where a process spends its time waiting on the device. With ``iterations`` set instead,
    training stops after that many iterations (the same schedule on any machine; validation every ``val_interval``
    epochs and at the end). With neither, the trainer's ``max_epochs``
    is the budget and the validator runs every ``val_interval`` epochs and after the last epoch.

    :meth:`progress` (0 to 1) is the fraction of the budget spent, read by :class:`WarmupCosineLR`. The spent
    budget and the validation history (``[cpu_s, iteration, key metric]`` rows) are in :meth:`state_dict`, so a
    resumed run continues the same budget. Under ``torch.distributed`` the ranks agree on the largest count, so
    they stop at the same iteration.

    Args:
        validator: the evaluator to run (its key metric is recorded in the history).
        cpu_seconds: the training budget in seconds of ``clock`` (CPU seconds of this process by default).
        iterations: the training budget in iterations (only without ``cpu_seconds``); neither: ``max_epochs``.
        val_every_cpu_s: CPU seconds between validations (CPU budget).
        val_interval: epochs between validations (epoch budget).
        clock: ``"process"`` (``time.process_time``) or ``"wall"`` (``time.perf_counter``), for ``cpu_seconds``.

    Raises:
        ValueError: naming the bundle setting (``budget_cpu_s``, ``budget_iterations``, ``val_every_cpu_s``,
            ``val_interval``, ``budget_clock``) for a value out of range, or both budgets given.
    """

    def __init__(
        self,
        validator: Engine,
        cpu_seconds: float | None = None,
        val_every_cpu_s: float = 300.0,
        val_interval: int = 1,
        iterations: int | None = None,
        clock: str = "process",
    ) -> None:
        if clock not in BUDGET_CLOCKS:
            raise ValueError(f"'budget_clock' must be one of {', '.join(BUDGET_CLOCKS)}, got {clock!r}")
        if cpu_seconds is not None and not cpu_seconds > 0:
            raise ValueError(f"'budget_cpu_s' must be > 0 or null, got {cpu_seconds}")
        if iterations is not None and (int(iterations) != iterations or iterations < 1):
            raise ValueError(f"'budget_iterations' must be a whole number >= 1 or null, got {iterations}")
        if cpu_seconds is not None and iterations is not None:
            raise ValueError("give 'budget_cpu_s' or 'budget_iterations', not both")
        if not val_every_cpu_s > 0:
            raise ValueError(f"'val_every_cpu_s' must be > 0, got {val_every_cpu_s}")
        if int(val_interval) != val_interval or val_interval < 1:
            raise ValueError(f"'val_interval' must be a whole number >= 1, got {val_interval}")
        self.validator = validator
        self.cpu_seconds = None if cpu_seconds is None else float(cpu_seconds)
        self.val_every_cpu_s = float(val_every_cpu_s)
        self.val_interval = int(val_interval)
        self.iterations = None if iterations is None else int(iterations)
        self._now, self._unit = BUDGET_CLOCKS[clock]
        self.used_cpu_s = 0.0
        self.history: list[list[float]] = []
        self._mark = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The spent budget and the validation history, for the trainer's checkpoint.

        Returns:
            ``{"used_cpu_s": float, "history": [[cpu_s, iteration, key metric], ...]}``.
        """
        return {"used_cpu_s": self.used_cpu_s, "history": [list(map(float, row)) for row in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the budget of a resumed run.

        Args:
            state: what :meth:`state_dict` returned.
        """
        self.used_cpu_s = float(state["used_cpu_s"])
        self.history = [list(row) for row in state["history"]]

    def attach(self, engine: Engine) -> None:
        """Count the budget on ``engine``, validate on its schedule and stop the engine when the budget is spent.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._final)
        if self.cpu_seconds is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._tick)
        elif self.iterations is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._at_end), self._stop)
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._not_at_end), self._epoch)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _at_end(self, engine: Engine, event: int) -> bool:
        return engine.state.iteration >= self.iterations

    def _not_at_end(self, engine: Engine, event: int) -> bool:
        return engine.state.iteration < self.iterations

    def _stop(self, engine: Engine) -> None:
        self._validate(engine)
        logger.info("training budget of %d iterations spent (epoch %d): stopping", self.iterations, engine.state.epoch)
        engine.terminate()

    def progress(self, engine: Engine, iteration: int | None = None) -> float:
        """Fraction of the budget spent, 0 to 1.

        Args:
            engine: the trainer (its iteration, ``max_epochs`` and ``epoch_length`` for iteration and epoch budgets).
            iteration: the iterations done; None means ``engine.state.iteration``. Not used with a CPU budget.

        Returns:
            The fraction, clipped to 1.
        """
        if self.cpu_seconds is not None:
            return min(1.0, self.used_cpu_s / self.cpu_seconds)
        done = engine.state.iteration if iteration is None else iteration
        total = self.iterations or (engine.state.max_epochs or 1) * (engine.state.epoch_length or 1)
        return min(1.0, done / total)

    def _start(self, engine: Engine) -> None:
        self._mark = self._now()
        if self.cpu_seconds is not None:
            logger.info("training budget: %.0f of %.0f %s spent, validation every %.0f %s", self.used_cpu_s,
                        self.cpu_seconds, self._unit, self.val_every_cpu_s, self._unit)
        if self.progress(engine) >= 1.0 and (self.cpu_seconds is not None or self.iterations is not None):
            logger.info("the training budget was already spent (a resumed, finished run): nothing to train")
            engine.terminate()

    def _tick(self, engine: Engine) -> None:
        now = self._now()
        before = self.used_cpu_s
        self.used_cpu_s += now - self._mark
        if idist.get_world_size() > 1:
            self.used_cpu_s = float(idist.all_reduce(torch.tensor(self.used_cpu_s, dtype=torch.float64), op="MAX"))
        done = self.used_cpu_s >= self.cpu_seconds
        if done or math.floor(self.used_cpu_s / self.val_every_cpu_s) > math.floor(before / self.val_every_cpu_s):
            self._validate(engine)
        if done:
            logger.info("training budget of %.0f %s spent at iteration %d (epoch %d): stopping",
                        self.cpu_seconds, self._unit, engine.state.iteration, engine.state.epoch)
            engine.terminate()
        self._mark = self._now()

    def _final(self, engine: Engine) -> None:
        # a run that ends before its budget (max_epochs, early stopping) is validated at its last iteration too
        if engine.state.iteration > 0 and (not self.history or self.history[-1][1] != engine.state.iteration):
            self._validate(engine)

    def _epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.val_interval == 0 or engine.state.epoch == engine.state.max_epochs:
            self._validate(engine)

    def _validate(self, engine: Engine) -> None:
        self.validator.run(engine.state.epoch)
        key = self.validator.state.key_metric_name
        value = self.validator.state.metrics.get(key, float("nan")) if key else float("nan")
        self.history.append([round(self.used_cpu_s, 1), float(engine.state.iteration), float(value)])
        if self.cpu_seconds is not None:
            logger.info("validation at %.0f / %.0f %s (iteration %d): %s %.4f",
                        self.used_cpu_s, self.cpu_seconds, self._unit, engine.state.iteration, key, value)


class WarmupCosineLR:
    """Set every parameter group's learning rate before each iteration from the budget spent ``p``: a linear
    warm-up over the first ``warmup_fraction`` of the budget (from peak * 0.001 / (warmup_fraction + 0.001), so the
    first iteration does not run at a rate of 0), then a cosine from the group's initial rate
    down to ``eta_min`` at the end of the budget. The rate depends only on ``p``, so a resumed run continues the
    same curve, and a run given more budget stretches the curve instead of restarting it.

    Args:
        optimizer: the optimizer; each group's ``lr`` at attach time is its peak rate.
        budget: the :class:`TrainingBudget` that says how much is spent.
        eta_min: the final rate.
        warmup_fraction: share of the budget spent warming up, in [0, 1).

    Raises:
        ValueError: naming the bundle setting for ``warmup_fraction`` outside [0, 1) (``lr_warmup_fraction``) or a
            negative ``eta_min`` (``lr_eta_min``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, budget: TrainingBudget, eta_min: float = 0.0,
                 warmup_fraction: float = 0.0) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"'lr_warmup_fraction' must be in [0, 1), got {warmup_fraction}")
        if eta_min < 0:
            raise ValueError(f"'lr_eta_min' must be >= 0, got {eta_min}")
        self.optimizer = optimizer
        self.budget = budget
        self.eta_min = float(eta_min)
        self.warmup_fraction = float(warmup_fraction)
        self.peaks = [float(g["lr"]) for g in optimizer.param_groups]

    def attach(self, engine: Engine) -> None:
        """Set the rates before every iteration of ``engine`` and log the rate after every epoch.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.ITERATION_STARTED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def rate(self, peak: float, p: float) -> float:
        """The learning rate at a point of the budget.

        Args:
            peak: the group's peak (initial) rate.
            p: the fraction of the budget spent, 0 to 1.

        Returns:
            The rate: on the warm-up line, else on the cosine from ``peak`` to ``min(eta_min, peak)``.
        """
        if p < self.warmup_fraction:
            return peak * (p + 1e-3) / (self.warmup_fraction + 1e-3)
        t = (p - self.warmup_fraction) / (1.0 - self.warmup_fraction)
        low = min(self.eta_min, peak)
        return low + (peak - low) * (1.0 + math.cos(math.pi * min(1.0, t))) / 2.0

    def __call__(self, engine: Engine) -> None:
        p = self.budget.progress(engine, engine.state.iteration - 1)  # what was spent before this iteration
        for group, peak in zip(self.optimizer.param_groups, self.peaks, strict=True):
            group["lr"] = self.rate(peak, p)

    def _log(self, engine: Engine) -> None:
        logger.info("epoch %d: learning rate %.3g (budget %.0f %% spent)", engine.state.epoch,
                    self.optimizer.param_groups[0]["lr"], 100 * self.budget.progress(engine))
