"""Active-learning strategy: the unlabelled image whose predicted mask the current model is least sure about.

The stock ``monaibundle`` app has ``random`` and ``first`` only (its epistemic scoring sets a ``dropout`` argument
that VM-UNetV2 does not have).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import torch
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import name_to_device

from .infer import NoWeightsError, VMUNetV2InferTask

__all__ = ["SigmoidEntropy", "mean_binary_entropy"]

logger = logging.getLogger(__name__)


def mean_binary_entropy(logits: torch.Tensor) -> float:
    """Mean per-pixel entropy (nats) of the sigmoid of ``logits``.

    Args:
        logits: any shape.

    Returns:
        0 for a certain prediction, log(2) for a coin toss.
    """
    p = torch.sigmoid(logits.float())
    eps = 1e-7
    ent = -(p * torch.log(p.clamp_min(eps)) + (1 - p) * torch.log((1 - p).clamp_min(eps)))
    return float(ent.mean())


class SigmoidEntropy(Strategy):
    """The unlabelled image with the highest mean sigmoid entropy, one forward pass per image (no dropout sampling).

    Args:
        task: gives the app's inference task (called per request: the app creates its tasks after its strategies).
        max_images: how many unlabelled images are scored per request (a random subset when there are more).
    """

    def __init__(self, task: Callable[[], VMUNetV2InferTask], max_images: int = 16) -> None:
        super().__init__("Highest mean per-pixel entropy of the current model's prediction (one pass per image)")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self._task = task
        self.max_images = max_images

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        """Score the unlabelled images and pick the most uncertain.

        Args:
            request: the ``/activelearning/uncertainty`` request (``label_tag``, ``labels``, ``device``).
            datastore: the app's datastore.

        Returns:
            ``{"id", "entropy", "scores"}`` (``scores``: image id -> entropy), or None when every image is labelled.

        Raises:
            HTTPException: 409 when the model has no weights.
        """
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        if len(images) > self.max_images:
            images = sorted(random.sample(images, self.max_images))
        task = self._task()
        device = name_to_device(request.get("device"))
        scores: dict[str, float] = {}
        try:
            for image_id in images:
                scores[image_id] = mean_binary_entropy(task.logits(datastore.get_image_uri(image_id), device))
        except NoWeightsError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
        best = max(scores, key=lambda k: scores[k])
        logger.info("Uncertainty: scored %d images, selected %s (entropy %.4f)", len(scores), best, scores[best])
        return {"id": best, "entropy": scores[best], "scores": scores}
