"""TrainingBudget and WarmupCosineLR on a bare ignite trainer: CPU-second, iteration and epoch budgets, validation
marks, resume, the learning-rate curve and named errors."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from vmunetv2_monai.handlers import TrainingBudget, WarmupCosineLR


class FakeValidator:
    """Counts its runs; its key metric is the run number."""

    def __init__(self) -> None:
        self.runs = 0
        self.state = SimpleNamespace(key_metric_name="val_mean_dice", metrics={})

    def run(self, epoch: int | None = None) -> None:
        self.runs += 1
        self.state.metrics = {"val_mean_dice": float(self.runs)}


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _trainer(step_s: float = 0.0) -> Engine:
    return Engine(lambda engine, batch: _busy(step_s))


def test_cpu_budget_stops_and_validates_on_its_clock() -> None:
    trainer, validator = _trainer(0.01), FakeValidator()
    budget = TrainingBudget(validator, cpu_seconds=0.2, val_every_cpu_s=0.05)
    budget.attach(trainer)
    trainer.run(range(5), max_epochs=1000)
    assert 0.2 <= budget.used_cpu_s < 0.3
    assert 15 <= trainer.state.iteration <= 25  # ~0.01 CPU s per iteration
    assert validator.runs == len(budget.history) == 4  # at 0.05, 0.10, 0.15 and the end
    cpu = [row[0] for row in budget.history]
    assert cpu == sorted(cpu) and cpu[-1] >= 0.2 and budget.history[-1][2] == 4.0
    assert budget.progress(trainer) == 1.0


def test_validation_time_is_not_counted() -> None:
    class SlowValidator(FakeValidator):
        def run(self, epoch=None):
            _busy(0.05)
            super().run(epoch)

    trainer = _trainer(0.005)
    budget = TrainingBudget(SlowValidator(), cpu_seconds=0.1, val_every_cpu_s=0.02)
    budget.attach(trainer)
    trainer.run(range(5), max_epochs=1000)
    assert budget.used_cpu_s < 0.15  # five validations of 0.05 CPU s each would have ended it far sooner
    assert trainer.state.iteration >= 15


def test_wall_clock_budget_counts_waiting_that_cpu_time_does_not() -> None:
    trainer = Engine(lambda engine, batch: time.sleep(0.01))  # waits like a process on a GPU: little CPU time
    budget = TrainingBudget(FakeValidator(), cpu_seconds=0.2, val_every_cpu_s=0.1, clock="wall")
    budget.attach(trainer)
    start = time.perf_counter()
    trainer.run(range(5), max_epochs=1000)
    assert 0.2 <= budget.used_cpu_s <= time.perf_counter() - start
    assert 5 <= trainer.state.iteration <= 21  # ~0.01 s per iteration (sleep may overshoot, never undershoot)
    assert len(budget.history) == 2 and budget.progress(trainer) == 1.0


def test_iteration_budget_stops_exactly_and_validates_every_interval_and_at_end() -> None:
    trainer, validator = _trainer(), FakeValidator()
    budget = TrainingBudget(validator, iterations=12, val_interval=2)
    budget.attach(trainer)
    trainer.run(range(5), max_epochs=100)
    assert trainer.state.iteration == 12
    assert [row[1] for row in budget.history] == [10.0, 12.0]  # epoch 2 (iteration 10), then the budget's end


def test_epoch_budget_validates_every_interval_and_after_the_last_epoch() -> None:
    trainer, validator = _trainer(), FakeValidator()
    TrainingBudget(validator, val_interval=2).attach(trainer)
    trainer.run(range(3), max_epochs=5)
    assert validator.runs == 3  # epochs 2, 4 and 5


def test_resume_continues_the_budget_and_a_spent_budget_trains_nothing() -> None:
    trainer, validator = _trainer(0.01), FakeValidator()
    budget = TrainingBudget(validator, cpu_seconds=0.1, val_every_cpu_s=1.0)
    budget.attach(trainer)
    trainer.run(range(5), max_epochs=1000)
    state = budget.state_dict()

    again, validator2 = _trainer(0.01), FakeValidator()
    resumed = TrainingBudget(validator2, cpu_seconds=0.1, val_every_cpu_s=1.0)
    resumed.load_state_dict(state)
    resumed.attach(again)
    again.run(range(5), max_epochs=1000)
    assert again.state.iteration == 0 and validator2.runs == 0 and resumed.history == budget.history

    longer = TrainingBudget(FakeValidator(), cpu_seconds=0.15, val_every_cpu_s=1.0)
    longer.load_state_dict(state)
    engine = _trainer(0.01)
    longer.attach(engine)
    engine.run(range(5), max_epochs=1000)
    assert 3 <= engine.state.iteration <= 8 and longer.used_cpu_s >= 0.15  # only the 0.05 CPU s added


def test_warmup_cosine_rate_follows_the_budget() -> None:
    trainer = _trainer()
    budget = TrainingBudget(FakeValidator(), iterations=100, val_interval=1000)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupCosineLR(opt, budget, eta_min=1e-5, warmup_fraction=0.1)
    budget.attach(trainer)
    sched.attach(trainer)
    rates = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(opt.param_groups[0]["lr"]))
    trainer.run(range(10), max_epochs=100)
    assert len(rates) == 100
    assert rates[0] < 2e-5 and rates[:10] == sorted(rates[:10])  # warm-up from ~0
    assert rates[10] == pytest.approx(1e-3) and rates[10:] == sorted(rates[10:], reverse=True)
    assert sched.rate(1e-3, 0.55) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)) / 2)
    assert sched.rate(1e-3, 1.0) == pytest.approx(1e-5)


def test_epoch_schedule_decays_over_the_actual_run() -> None:
    """MONAI Label's stock app sets train#trainer#max_epochs: the rate still reaches eta_min at its end."""
    trainer = _trainer()
    budget = TrainingBudget(FakeValidator())
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    WarmupCosineLR(opt, budget, eta_min=1e-6).attach(trainer)
    budget.attach(trainer)
    trainer.run(range(4), max_epochs=2)
    # the last of 8 iterations runs at 7/8 of the cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 7 / 8)) / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"cpu_seconds": 0}, "'budget_cpu_s' must be > 0"), ({"iterations": 1.5}, "'budget_iterations'"),
     ({"cpu_seconds": 1, "iterations": 2}, "not both"), ({"val_every_cpu_s": -1}, "'val_every_cpu_s'"),
     ({"val_interval": 0}, "'val_interval'"), ({"clock": "gpu"}, "'budget_clock' must be one of process, wall")],
)
def test_bad_budget_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingBudget(FakeValidator(), **kwargs)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match="'lr_warmup_fraction'"):
        WarmupCosineLR(opt, TrainingBudget(FakeValidator()), warmup_fraction=1.0)


def test_a_run_ended_by_max_epochs_before_its_cpu_budget_is_validated_at_its_end() -> None:
    trainer, validator = _trainer(), FakeValidator()
    budget = TrainingBudget(validator, cpu_seconds=1000.0, val_every_cpu_s=500.0)
    budget.attach(trainer)
    trainer.run(range(3), max_epochs=2)
    assert validator.runs == 1 and budget.history[-1][1] == 6.0
