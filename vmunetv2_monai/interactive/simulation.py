"""``ClickSimulation``: simulated annotator clicks inside MONAI's Ignite engines (DeepEdit / RITM-style training)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from .clicks import next_click, render_clicks

__all__ = ["ClickSimulation"]

logger = logging.getLogger(__name__)


class ClickSimulation:
    """An ``iteration_update`` for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` that adds simulated clicks
    to a batch before the engine's own iteration runs on it.

    The batch's image is ``(B, C + 2, *S)``, its last two channels the click channels (foreground, background;
    zero from :class:`~vmunetv2_monai.interactive.AddClickGuidanced` without clicks), its label ``(B, 1, *S)``.
    Each round runs the network (eval mode, no gradient) with the clicks so far, and adds to every sample one click
    in its largest error region (:func:`~vmunetv2_monai.interactive.next_click`), as an annotator correcting the
    prediction would. The engine then trains (or is scored) on the batch with the final clicks.

    - Training (``train=True``): a batch gets no clicks with probability ``auto_probability`` (so the model keeps
      segmenting automatically, as DeepEdit does), and otherwise 1 to ``rounds`` clicks, each a random point of
      the error region's inner half.
    - Evaluation (``train=False``): exactly ``rounds`` clicks at the error regions' interior points (the click
      benchmark's annotator), so validation Dice is the Dice after ``rounds`` clicks.

    MONAI's ``monai.apps.deepedit.interaction.Interaction`` assumes 3-D label maps and CUDA autocast, hence this
    class; it returns ``engine._iteration(engine, batch)`` as MONAI's does.

    Args:
        image_size: the network's input grid (``sigma`` is in its pixels).
        rounds: clicks per sample (training: at most).
        auto_probability: training only: the chance of a batch without clicks.
        sigma: click bump width in grid pixels (as in ``AddClickGuidanced``).
        train: training or evaluation behaviour (see above).
        seed: seed of the click sampler.

    Raises:
        ValueError: for ``rounds < 0`` or ``auto_probability`` outside [0, 1].
    """

    def __init__(
        self, image_size: Sequence[int], rounds: int = 3, auto_probability: float = 0.25, sigma: float = 3.0,
        train: bool = True, seed: int = 0,
    ) -> None:
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if not 0.0 <= auto_probability <= 1.0:
            raise ValueError(f"auto_probability must be in [0, 1], got {auto_probability}")
        self.image_size = tuple(int(s) for s in image_size)
        self.rounds = int(rounds)
        self.auto_probability = float(auto_probability)
        self.sigma = float(sigma)
        self.train = train
        self.rng = np.random.default_rng(seed)
        self._logged = False

    def _count(self) -> int:
        if not self.train:
            return self.rounds
        if self.rounds == 0 or self.rng.random() < self.auto_probability:
            return 0
        return int(self.rng.integers(1, self.rounds + 1))

    def _log(self, clicks: list[dict[str, list[list[int]]]]) -> None:
        """INFO for the first batch that got clicks (the log shows the simulation runs), DEBUG for the others."""
        fg = sum(len(c["foreground"]) for c in clicks)
        bg = sum(len(c["background"]) for c in clicks)
        level = logging.DEBUG if self._logged else logging.INFO
        self._logged = True
        logger.log(level, "simulated clicks (%s): %d foreground and %d background clicks on a batch of %d",
                   "training" if self.train else "validation", fg, bg, len(clicks))

    def __call__(self, engine: SupervisedTrainer | SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        """
        Args:
            engine: the trainer or evaluator (its network, inferer, ``prepare_batch`` and ``_iteration`` are used).
            batchdata: the batch; its image's last two channels are overwritten with the clicks.

        Returns:
            What the engine's own iteration returns for the batch.
        """
        image, label = batchdata["image"], batchdata["label"]
        spatial = tuple(image.shape[2:])
        image[:, -2:] = 0
        clicks: list[dict[str, list[list[int]]]] = [{"foreground": [], "background": []} for _ in range(len(image))]
        count = self._count()
        if count:
            truth = label[:, 0].detach().cpu().numpy() > 0.5
            network = engine.network
            was_training = network.training
            network.eval()
            try:
                for _ in range(count):
                    inputs, _ = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
                    with torch.no_grad():
                        logits = engine.inferer(inputs, network)
                    pred = logits[:, 0].detach().float().cpu().numpy() > 0.0
                    for b in range(len(image)):
                        click = next_click(pred[b], truth[b], None if not self.train else self.rng)
                        if click is None:
                            continue
                        kind, point = click
                        clicks[b][kind].append(point)
                        channel = -2 if kind == "foreground" else -1
                        image[b, channel] = render_clicks(clicks[b][kind], spatial, self.image_size, self.sigma)
            finally:
                network.train(was_training)
            self._log(clicks)
        engine.state.batch = batchdata
        return engine._iteration(engine, batchdata)
