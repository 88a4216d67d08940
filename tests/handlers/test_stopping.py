"""``vmunetv2_monai.handlers.stopping``: ``StopOnNonFiniteLoss`` stops training at a NaN or Inf loss with an error
(issue 26), and ``OptionalEarlyStopHandler`` is MONAI's early stop with patience 0 meaning off."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import stopping_fn_from_metric

from vmunetv2_monai.handlers import OptionalEarlyStopHandler, StopOnNonFiniteLoss


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_non_finite_loss_stops_training_with_an_error(loss):
    trainer = Engine(lambda e, b: {"loss": torch.tensor(loss if e.state.iteration == 3 else 1.0)})
    StopOnNonFiniteLoss().attach(trainer)
    with pytest.raises(FloatingPointError, match="iteration 3"):
        trainer.run(range(5), max_epochs=1)


def _epochs_trained(patience: int, scores: list[float], max_epochs: int = 6) -> int:
    """Epochs a trainer runs when an evaluator after each epoch reports ``scores`` (one per validation)."""
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _score(engine: Engine) -> None:
        engine.state.metrics["val_mean_dice"] = scores[trainer.state.epoch - 1]

    handler = OptionalEarlyStopHandler(patience, stopping_fn_from_metric("val_mean_dice"), trainer=trainer)
    handler.attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(range(1)))
    trainer.run(range(2), max_epochs=max_epochs)
    return trainer.state.epoch


def test_patience_stops_after_that_many_validations_without_improvement():
    assert _epochs_trained(2, [0.5, 0.6, 0.6, 0.6, 0.9, 0.9]) == 4  # best at epoch 2, then two without a gain


def test_patience_zero_is_off():
    assert _epochs_trained(0, [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]) == 6
    evaluator = Engine(lambda e, b: None)
    handler = OptionalEarlyStopHandler(0, stopping_fn_from_metric("val_mean_dice"), trainer=Engine(lambda e, b: None))
    handler.attach(evaluator)  # MONAI's own handler would refuse patience 0 when given the trainer
    assert not evaluator.has_event_handler(handler, Events.EPOCH_COMPLETED)


def test_negative_patience_is_named():
    with pytest.raises(ValueError, match="'early_stop_patience' must be >= 0"):
        OptionalEarlyStopHandler(-1, stopping_fn_from_metric("val_mean_dice"))
