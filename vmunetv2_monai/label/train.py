"""MONAI Label's stock bundle training task with checked request parameters and a report of the images used.

MONAI Label's :class:`~monailabel.tasks.train.bundle.BundleTrainTask` runs the bundle's ``train.json`` on the
datastore's final labels exactly as the stock ``monaibundle`` app does (a ``CheckpointLoader`` of
``models/<model_filename>`` makes it fine-tune with ``finetune_learning_rate``; the bundle's ``KeepBetterModel``
replaces ``models/model.pt`` only by a model that scores at least as well). This task adds only what the stock one
lacks: a parameter it cannot honour is a client error, a split that leaves no validation image validates on the
training images (the stock task would select and save no model), and the response lists the images used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from ..data.datalist import image_stem

__all__ = ["TrainRequestError", "VMUNetV2TrainTask"]

logger = logging.getLogger(__name__)


class TrainRequestError(ValueError):
    """A training request with a parameter the task cannot honour (reported to the client as HTTP 400)."""


class VMUNetV2TrainTask(BundleTrainTask):
    """The stock bundle task on ``<bundle>/configs/train.json``.

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` options.
    """

    def __init__(self, path: str | os.PathLike, conf: dict[str, str]) -> None:
        super().__init__(str(path), conf, load_strict=True)
        if not self.valid:
            raise ValueError(f"the bundle at {path} has no train config (configs/train.json)")
        self._last_split: tuple[list[dict], list[dict]] = ([], [])

    def validate_request(self, request: dict[str, Any]) -> None:
        """Refuse parameters this task cannot honour, before any work is done.

        Args:
            request: the ``/train`` request.

        Raises:
            TrainRequestError: a ``max_epochs``, ``val_split``, ``model_filename``, ``force_multi_gpu`` or ``run_id``
                the task cannot honour, naming the value.
        """
        epochs = request.get("max_epochs")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise TrainRequestError(f"max_epochs must be a positive integer, got {epochs!r}")
        split = request.get("val_split")
        if split is not None and (
            isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= float(split) < 1.0
        ):
            raise TrainRequestError(f"val_split must be a number in [0, 1), got {split!r}")
        name = request.get("model_filename")
        if name is not None:
            if isinstance(name, list) and len(name) >= 1:
                name = name[0]
            bare = isinstance(name, str) and name == os.path.basename(name) and "\\" not in name
            if not bare or not name.endswith(".pt") or name != name.strip():
                raise TrainRequestError(f"model_filename must be a bare '*.pt' file name in models/, got {name!r}")
        if request.get("force_multi_gpu"):
            raise TrainRequestError("force_multi_gpu is not supported by this app")
        if request.get("run_id") not in (None, "", "run"):
            raise TrainRequestError(f"run_id must be 'run' (the bundle's training run), got {request.get('run_id')!r}")

    def _partition_datalist(
        self, datalist: list[dict], request: dict[str, Any], shuffle: bool = False
    ) -> tuple[list[dict], list[dict]]:
        """Split as the stock task does; an empty validation list becomes the training list (logged)."""
        train_ds, val_ds = super()._partition_datalist(datalist, request, shuffle=shuffle)
        if not val_ds:
            logger.warning(
                "No validation images after the split (%d labelled, val_split=%s): validating on the training images",
                len(datalist),
                request.get("val_split", 0.2),
            )
            val_ds = list(train_ds)
        self._last_split = (list(train_ds), list(val_ds))
        return train_ds, val_ds

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Train with the stock task on a freshly read ``train.json``.

        The stock task adds its ``CheckpointLoader`` of the requested model file to the parsed ``train#handlers``
        only when none is there, so a config kept from an earlier request would fine-tune the earlier file.

        Args:
            request: the ``/train`` request.
            datastore: the app's datastore (its final labels are the training data).

        Returns:
            ``max_epochs`` and the ids of the training and validation images (the stock task returns nothing).
        """
        self._last_split = ([], [])
        self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
        super().__call__(request, datastore)
        train_ds, val_ds = self._last_split
        return {
            "max_epochs": request.get("max_epochs", 50),
            "train_images": [image_stem(Path(d["image"])) for d in train_ds],
            "val_images": [image_stem(Path(d["image"])) for d in val_ds],
        }
