"""Active-learning strategy: the unlabelled image whose predicted mask the current model is least sure about."""

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
    """Mean per-pixel entropy (nats) of the sigmoid of ``logits``; 0 = certain, log(2) = coin toss."""
    p = torch.sigmoid(logits.float())
    eps = 1e-7
    ent = -(p * torch.log(p.clamp_min(eps)) + (1 - p) * torch.log((1 - p).clamp_min(eps)))
    return float(ent.mean())


class SigmoidEntropy(Strategy):
    """Scores up to ``max_images`` unlabelled images (a random subset when there are more) with one forward pass
    each and returns the one with the highest mean sigmoid entropy. Cheap: no dropout sampling."""

    def __init__(self, task: Callable[[], VMUNetV2InferTask], max_images: int = 16) -> None:
        super().__init__("Highest mean per-pixel entropy of the current model's prediction (one pass per image)")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self._task = task
        self.max_images = max_images

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))
        if not images:
            return None
        if len(images) > self.max_images:
            images = sorted(random.sample(images, self.max_images))
        task = self._task()
        device = name_to_device(request.get("device"))
        try:
            network = task._get_network(device, None)
        except NoWeightsError as e:
            raise HTTPException(status_code=409, detail=str(e)) from e
        scores: dict[str, float] = {}
        for image_id in images:
            path = datastore.get_image_uri(image_id)
            data = {task.key_image: path, "image_path": path, "device": device}
            data = task.run_pre_transforms(data, task.pre_transforms(data))
            inputs = torch.as_tensor(data[task.key_image])[None].to(torch.device(device))
            with torch.no_grad():
                logits = task.inferer(data)(inputs, network)
            scores[image_id] = mean_binary_entropy(logits)
        best = max(scores, key=lambda k: scores[k])
        logger.info("Uncertainty: scored %d images, selected %s (entropy %.4f)", len(scores), best, scores[best])
        return {"id": best, "entropy": scores[best], "scores": scores}
