"""MONAI Label training task for the VM-UNetV2 bundle: the bundle's own train workflow on the datastore's labels."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import monai.bundle
from monai.bundle import ConfigParser
from monailabel.tasks.train.bundle import BundleTrainTask

from .bundle_config import BundleFiles, load_parser

__all__ = ["TrainRequestError", "VMUNetV2TrainTask"]

logger = logging.getLogger(__name__)


def _image_id(path: str) -> str:
    """Datastore id of an image file: its name without the extension(s)."""
    name = os.path.basename(path)
    suffix = "".join(Path(name).suffixes)
    return name[: len(name) - len(suffix)] if suffix else name


class TrainRequestError(ValueError):
    """A training request with a parameter the task cannot honour (reported to the client as HTTP 400)."""


class VMUNetV2TrainTask(BundleTrainTask):
    """Runs ``train.json`` + ``monailabel_overrides.json`` with MONAI Label's overrides.

    MONAI Label sets the epochs, the device and the training/validation lists (``labels/final`` of the datastore,
    split by ``val_split``) and, with ``pretrained`` (default true), starts from ``models/<model_filename>``. The
    best model by validation Dice is written to ``<bundle>/models/model.pt`` (atomically), which the infer task
    reloads on its next request. When the split leaves no validation image (few labels, or ``val_split`` 0), the
    training images are used for validation, so that a model is still selected and saved.
    """

    def __init__(self, bundle: BundleFiles, conf: dict[str, str] | None = None) -> None:
        self.bundle = bundle
        super().__init__(str(bundle.root), conf or {}, load_strict=True)
        if not self.valid:
            raise ValueError(f"the bundle at {bundle.root} has no train config")

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """The merged train config (MONAI Label's base class would read ``train.json`` alone)."""
        return load_parser(self.bundle, "train")

    def config(self) -> dict[str, Any]:
        """User-facing options: the base ones, with single-process CPU-friendly defaults."""
        options = super().config()
        options.update({"max_epochs": 50, "val_split": 0.2, "multi_gpu": False, "model_filename": ["model.pt"]})
        return options

    def validate_request(self, request: dict[str, Any]) -> None:
        """Raise :class:`TrainRequestError` for parameters this task cannot honour (before any work is done)."""
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

    def _partition_datalist(self, datalist: list[dict], request: dict[str, Any], shuffle: bool = False):
        """Split as MONAI Label does; an empty validation list becomes the training list (logged)."""
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

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        """Train; returns which images were used and where the model went (MONAI Label's base returns nothing)."""
        self._last_split = ([], [])
        # fresh configs per run: the base class inserts a CheckpointLoader into the parsed train#handlers list
        self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
        super().__call__(request, datastore)
        train_ds, val_ds = self._last_split
        return {
            "model": self.bundle.model_path.name,
            "max_epochs": request.get("max_epochs", 50),
            "train_images": [_image_id(d["image"]) for d in train_ds],
            "val_images": [_image_id(d["image"]) for d in val_ds],
        }

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """``monai.bundle.run`` on the merged configs, with the bundle's own initialize/finalize steps.

        The server's logging is left alone (no ``logging.conf``).
        """
        monai.bundle.run(
            run_id="run",
            meta_file=str(self.bundle.metadata),
            config_file=self.bundle.config_files("train"),
            logging_file=False,
            **overrides,
        )
