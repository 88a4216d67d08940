"""An exponential moving average of the trained weights (ignite's ``EMAHandler``) that validation scores and the best
saver keeps, for the bundle's ``ema_momentum`` setting."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

__all__ = ["WeightAverage", "weight_average"]


class WeightAverage(EMAHandler):
    """ignite's :class:`~ignite.handlers.EMAHandler` (parameters and buffers averaged, ``handle_buffers="update"``)
    whose average starts from the network's weights as the trainer starts.

    ``EMAHandler`` copies the network when it is built, before ``init_weights`` (a fine-tune) are loaded. When the
    trainer starts at iteration 0, the average is set to the network's current weights; a resumed run keeps the
    average its ``latest.pt`` restored (``train#state`` holds it as ``ema_model``).

    Args:
        model: the trained network.
        momentum: the weight of each iteration's weights, in (0, 1): ``avg = (1 - momentum) * avg + momentum * w``.
    """

    def __init__(self, model: torch.nn.Module, momentum: float) -> None:
        super().__init__(model, momentum=momentum, handle_buffers="update")

    def attach(self, engine: Engine, name: str = "ema_momentum", warn_if_exists: bool = False,
               event: str | Events = Events.ITERATION_COMPLETED) -> None:
        """Start the average at the trainer's start (after the checkpoint loaders attached before it) and update it
        on ``event``.

        Args:
            engine: the trainer; attach this before the handler that runs validation on ``event``.
            name: the ``engine.state`` attribute that holds the momentum.
            warn_if_exists: warn when ``engine.state`` already has ``name`` (a resumed run restores it).
            event: when the average is updated.
        """
        engine.add_event_handler(Events.STARTED, self._start)
        super().attach(engine, name=name, warn_if_exists=warn_if_exists, event=event)

    def _start(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            self.ema_model.load_state_dict(self.model.state_dict())


def weight_average(network: torch.nn.Module, momentum: float | None) -> WeightAverage | None:
    """The bundle's ``ema``: a :class:`WeightAverage` of ``network``, or None when ``momentum`` is None (off).

    Args:
        network: the trained network.
        momentum: ``ema_momentum``; None turns the average off.

    Returns:
        The handler, or None.
    """
    return None if momentum is None else WeightAverage(network, momentum)
