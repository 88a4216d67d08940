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
    # the schedule annealed to (almost) eta_min inside the budget instead of stopping at a high rate
    assert opt.param_groups[0]["lr"] < 0.05


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
    fit = FitEpochsToBudget(25.0, clock=clock, calibrate_epoch=1)
    fit.attach(engine)
    engine.run(range(3), max_epochs=20)  # one epoch = 30 s > budget
    assert fit.fitted_epochs == 1 and engine.state.epoch == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budget_s": 0}, "budget_s"), ({"budget_s": 10, "calibrate_epoch": 0}, "calibrate_epoch"),
     ({"budget_s": 10, "lr_scheduler": object()}, "T_max")],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FitEpochsToBudget(**kwargs)
