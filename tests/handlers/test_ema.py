"""WeightAverage: ignite's EMAHandler started from the network's weights as the trainer starts, kept on resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from vmunetv2_monai.bundle.checks import check_options
from vmunetv2_monai.handlers import WeightAverage, weight_average


def _trainer(net: torch.nn.Linear) -> Engine:
    """Each iteration sets the weights to the iteration number (the data value)."""

    def step(engine: Engine, value: float) -> None:
        with torch.no_grad():
            net.weight.fill_(value)
            net.bias.fill_(-value)

    return Engine(step)


def test_average_starts_from_the_weights_at_start_and_follows_each_iteration() -> None:
    net = torch.nn.Linear(2, 1)
    ema = weight_average(net, 0.5)
    with torch.no_grad():  # weights loaded after the handler was built (a fine-tune's init_weights)
        net.weight.fill_(8.0)
        net.bias.fill_(-8.0)
    trainer = _trainer(net)
    ema.attach(trainer)
    trainer.run([2.0, 4.0], max_epochs=1)
    expected = 0.5 * (0.5 * 8.0 + 0.5 * 2.0) + 0.5 * 4.0  # 4.5: from 8, then 2, then 4
    assert torch.allclose(ema.ema_model.weight, torch.full((1, 2), expected))
    assert torch.allclose(ema.ema_model.bias, torch.full((1,), -expected))
    assert not ema.ema_model.training


def test_a_resumed_run_keeps_the_restored_average() -> None:
    net = torch.nn.Linear(2, 1)
    ema = WeightAverage(net, 0.5)
    with torch.no_grad():
        ema.ema_model.weight.fill_(10.0)  # as a resume's checkpoint loader restores it
        ema.ema_model.bias.fill_(-10.0)
    trainer = _trainer(net)

    @trainer.on(Events.STARTED)
    def restored(engine: Engine) -> None:
        engine.state.iteration = 3  # the loader restores the trainer's state before the average starts

    ema.attach(trainer)
    trainer.run([2.0, 4.0, 6.0, 8.0], max_epochs=1)  # one iteration left of 4, on the first item (2)
    assert torch.allclose(ema.ema_model.weight, torch.full((1, 2), 6.0))  # from the restored 10


def test_off_by_default_and_bad_momentum_named() -> None:
    assert weight_average(torch.nn.Linear(2, 1), None) is None
    assert check_options({"ema_momentum": None}) and check_options({"ema_momentum": 0.001})
    for bad in (0.0, 1.0, "0.1"):
        with pytest.raises(ValueError, match="'ema_momentum'"):
            check_options({"ema_momentum": bad})
