"""When a trainer stops early: on a non-finite training loss (an error), or when the validation score stops
improving (MONAI's ``EarlyStopHandler``, which a patience of 0 turns off)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

__all__ = ["OptionalEarlyStopHandler", "StopOnNonFiniteLoss"]


class OptionalEarlyStopHandler(EarlyStopHandler):
    """MONAI's :class:`~monai.handlers.EarlyStopHandler` with ``patience`` 0 meaning "never stop early", so a
    config lists the handler once instead of attaching it conditionally.

    Args:
        patience: validations without an improvement of the score before training stops; 0: off.
        score_function: ``engine -> float``, higher is better (e.g. ``stopping_fn_from_metric("val_mean_dice")``).
        trainer: the trainer to stop.
        min_delta: the smallest change of the score that counts as an improvement.
        cumulative_delta: compare with the best score instead of the last one.
        epoch_level: check after every evaluator epoch (else after every iteration).

    Raises:
        ValueError: ``patience`` is negative (named as the bundle setting ``early_stop_patience``).
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable[[Engine], float],
        trainer: Engine | None = None,
        min_delta: float = 0.0,
        cumulative_delta: bool = False,
        epoch_level: bool = True,
    ) -> None:
        if patience < 0:
            raise ValueError(f"'early_stop_patience' must be >= 0 (0: off), got {patience}")
        super().__init__(patience, score_function, None, min_delta, cumulative_delta, epoch_level)
        if trainer is not None:
            self.set_trainer(trainer)

    def set_trainer(self, trainer: Engine) -> None:
        """Set the trainer to stop (nothing to set when the handler is off).

        Args:
            trainer: the trainer engine.
        """
        if self.patience > 0:
            super().set_trainer(trainer)

    def attach(self, engine: Engine) -> None:
        """Check the score after each epoch (or iteration) of ``engine``; an off handler attaches nothing.

        Args:
            engine: the evaluator whose metrics the score function reads.
        """
        if self.patience > 0:
            super().attach(engine)


class StopOnNonFiniteLoss:
    """Stop training with an error as soon as the training loss is NaN or Inf (ignite's ``TerminateOnNan``
    ends the run with exit status 0)."""

    def attach(self, engine: Engine) -> None:
        """Check the loss after every iteration of ``engine``.

        Args:
            engine: a trainer.
        """
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            loss = item.get("loss") if isinstance(item, Mapping) else None
            if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
                raise FloatingPointError(
                    f"training loss is {float(torch.as_tensor(loss).float().mean())} at epoch {engine.state.epoch}, "
                    f"iteration {engine.state.iteration}: training diverged; lower 'learning_rate'"
                )
