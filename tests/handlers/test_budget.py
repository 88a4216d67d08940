"""FitEpochsToBudget: epochs and cosine schedule fitted to a wall-clock budget (fake clock, no sleeping)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from vmunetv2_monai.handlers import FitEpochsToBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _engine(clock: FakeClock, seconds_per_iteration: float) -> Engine:
    def step(engine: Engine, batch: int) -> None:
        clock.now += seconds_per_iteration

    return Engine(step)


def test_epochs_and_schedule_fit_the_budget() -> None:
    clock = FakeClock()
    engine = _engine(clock, seconds_per_iteration=2.0)  # 5 iterations: 10 s per epoch
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.0)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    fit = FitEpochsToBudget(100.0, sched, clock=clock)
    fit.attach(engine)
    engine.run(range(5), max_epochs=50)
    # after 2 epochs (20 s) 80 s remain = 8 more epochs
    assert fit.fitted_epochs == 10 and engine.state.epoch == 10 and sched.T_max == 10
    assert clock.now <= 100.0
    # the schedule annealed to eta_min inside the budget instead of stopping at a high rate
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_refits_when_the_pace_changes() -> None:
    """A slow calibration epoch (another job on the machine) does not cut the run short: the count is refitted
    after every epoch from the mean pace since the first, and the cosine follows it."""
    clock = FakeClock()
    durations = iter([30.0, 30.0] + [10.0] * 100)  # epochs 1-2 slow, then fast

    def step(engine: Engine, batch: int) -> None:
        clock.now += next(durations)

    engine = Engine(step)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.1)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    lrs = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    FitEpochsToBudget(200.0, sched, clock=clock).attach(engine)
    engine.run(range(1), max_epochs=50)
    # after epoch 2 (60 s, pace 30): 2 + 4 = 6; the pace then falls towards 10 s and the count grows
    assert engine.state.epoch > 6 and clock.now <= 200.0
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decreasing: no restart of the cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_never_raises_max_epochs() -> None:
    clock = FakeClock()
    engine = _engine(clock, seconds_per_iteration=1.0)
    fit = FitEpochsToBudget(1e6, clock=clock)
    fit.attach(engine)
    engine.run(range(3), max_epochs=4)
    assert fit.fitted_epochs == 4 and engine.state.epoch == 4


def test_budget_spent_at_calibration_stops_there() -> None:
    clock = FakeClock()
    engine = _engine(clock, seconds_per_iteration=10.0)
    fit = FitEpochsToBudget(45.0, clock=clock)
    fit.attach(engine)
    engine.run(range(3), max_epochs=20)  # one epoch = 30 s: two epochs already spend the budget
    assert fit.fitted_epochs == 2 and engine.state.epoch == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budget_s": 0}, "budget_s"), ({"budget_s": 10, "calibrate_epoch": 1}, "calibrate_epoch"),
     ({"budget_s": 10, "lr_scheduler": object()}, "CosineAnnealingLR")],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FitEpochsToBudget(**kwargs)
