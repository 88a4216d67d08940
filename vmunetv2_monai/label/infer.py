"""MONAI Label's stock bundle inference task with checked weights and request parameters.

MONAI Label's :class:`~monailabel.tasks.infer.bundle.BundleInferTask` runs the bundle's ``inference.json``
(``preprocessing``, ``inferer``, ``postprocessing``, ``displayable_configs``) exactly as the stock ``monaibundle``
app does. This task adds only what the stock one lacks: the weights are read by
:func:`vmunetv2_monai.checkpoints.load_state_dict` (the package's checkpoint reader: a foreign file, pickled
objects or NaN are refused naming the file; the stock task serves random weights once ``model.pt`` is gone), a
request parameter it cannot honour is a client error, and the result JSON names the weights used.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import device_map

from ..checkpoints import load_state_dict

__all__ = ["RESULT_DTYPES", "RESULT_EXTENSIONS", "InferRequestError", "NoWeightsError", "VMUNetV2InferTask"]

logger = logging.getLogger(__name__)

#: Mask file types a client may ask for (``result_extension``); JPEG would blur a mask, so it is not offered.
RESULT_EXTENSIONS: tuple[str, ...] = (".png", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")
#: Mask pixel types a client may ask for (``result_dtype``); the PNG writer takes only integer types.
RESULT_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "int32", "float32")
MODEL_FILE = "model.pt"


class InferRequestError(ValueError):
    """An inference request with a parameter the task cannot honour (reported to the client as HTTP 400)."""


class NoWeightsError(RuntimeError):
    """The bundle's weights file is missing (reported to the client as HTTP 409)."""


class VMUNetV2InferTask(BundleInferTask):
    """The stock bundle task on ``<bundle>/configs/inference.json``, weights from ``<bundle>/models/<file>``.

    Args:
        path: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        conf: the app's ``--conf`` options (``preload``: load the network at start-up).
    """

    def __init__(self, path: str | os.PathLike, conf: dict[str, str]) -> None:
        super().__init__(str(path), conf, load_strict=True)
        self.models_dir = Path(path) / "models"
        self._loaded: dict[tuple[str, str], tuple[torch.nn.Module, int, str]] = {}

    def model_files(self) -> list[str]:
        """Names of the ``*.pt`` files in ``models/``, ``model.pt`` first.

        Returns:
            file names (never paths); empty when ``models/`` is missing.
        """
        if not self.models_dir.is_dir():
            return []
        names = sorted(p.name for p in self.models_dir.glob("*.pt") if p.is_file())
        return sorted(names, key=lambda n: (n != MODEL_FILE, n))

    def config(self) -> dict[str, Any]:
        """User-facing options; the list of model files is read fresh (training adds files to ``models/``).

        Returns:
            the task's options, as ``GET /info/`` lists them.
        """
        self._config["model_filename"] = self.model_files()
        return self._config

    def validate_request(self, request: dict[str, Any]) -> None:
        """Refuse parameters this task cannot honour, before any work is done.

        Args:
            request: the ``/infer`` request (its ``params`` merged in by MONAI Label).

        Raises:
            InferRequestError: a ``result_extension``, ``result_dtype``, ``device`` or ``model_filename`` that is not
                offered, naming the value.
        """
        ext = request.get("result_extension")
        if ext is not None and (not isinstance(ext, str) or ext.lower() not in RESULT_EXTENSIONS):
            raise InferRequestError(f"result_extension must be one of {list(RESULT_EXTENSIONS)}, got {ext!r}")
        dtype = request.get("result_dtype")
        if dtype is not None and dtype not in RESULT_DTYPES:
            raise InferRequestError(f"result_dtype must be one of {list(RESULT_DTYPES)}, got {dtype!r}")
        device = request.get("device")
        if device is not None:
            if isinstance(device, list) and len(device) == 1:
                device = device[0]
            if not isinstance(device, str):
                raise InferRequestError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
            if device not in device_map():
                try:
                    torch.device(device)
                except RuntimeError as e:
                    raise InferRequestError(f"unknown device {device!r}: {e}") from e
        if request.get("model_filename") is not None:
            self.model_file(request["model_filename"])

    def model_file(self, name: Any) -> Path:
        """Path of the model file ``name``; never a path taken from a request.

        Args:
            name: a bare file name listed in ``models/`` (or a list whose first item is one, as the options give).

        Raises:
            InferRequestError: ``name`` is not one of :meth:`model_files`.
        """
        if isinstance(name, list) and len(name) >= 1:
            name = name[0]
        available = self.model_files()
        if not isinstance(name, str) or name not in available:
            raise InferRequestError(f"model_filename must be one of {available}, got {name!r}")
        return self.models_dir / name

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict]:
        """Check the request (:meth:`validate_request`), then run the stock task.

        Args:
            request: the ``/infer`` request.
            callbacks: MONAI Label's per-stage callbacks.

        Returns:
            the mask file (H x W, 1 = lesion; uint8 PNG unless the request asks otherwise) and the result JSON.
        """
        self.validate_request(request)
        return super().__call__(request, callbacks)

    def logits(self, image_path: str, device: str) -> torch.Tensor:
        """The network's output for one image: the stock task's preprocessing and inferer, no postprocessing.

        Args:
            image_path: an image file.
            device: e.g. ``"cpu"`` or ``"cuda:0"``.

        Returns:
            logits ``(out_channels, W, H)`` (MONAI's spatial order for a 2D image file).
        """
        data = {**copy.deepcopy(self.config()), "image": image_path, "image_path": image_path, "device": device}
        data = self.run_pre_transforms(data, self.pre_transforms(data))
        return self.run_inferer(data, device=device)[self.output_label_key]

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        """The bundle's network with the requested weights on ``device``, reloaded when the file changes.

        Overrides the stock loader (``torch.load`` of whatever path exists, else the untrained network).

        Args:
            device: e.g. ``"cpu"`` or ``"cuda:0"``.
            data: the request (``model_filename``; ``model_weights`` is set to the file name and its sha256).

        Raises:
            NoWeightsError: the weights file does not exist.
            ValueError: the file is not a checkpoint of this network (named, from the package's checkpoint reader).
        """
        name = data.get("model_filename") if data else None
        if isinstance(name, list):  # the options' list (the default when the request names no file)
            name = name[0] if name else None
        path = self.models_dir / MODEL_FILE if name in (None, MODEL_FILE) else self.model_file(name)
        if not path.is_file():
            raise NoWeightsError(
                f"the model has no trained weights yet ({path} does not exist): train it first "
                "(POST /train/<model>) or copy a checkpoint there"
            )
        mtime = path.stat().st_mtime_ns
        key = (str(device), str(path))
        cached = self._loaded.get(key)
        if not cached or cached[1] != mtime:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True, lazy=False)
            network.load_state_dict(load_state_dict(path), strict=True)
            network = network.to(torch.device(device)).eval()
            logger.info("Loaded weights %s (sha256 %s) on %s", path, digest[:12], device)
            cached = (network, mtime, digest)
            self._loaded[key] = cached
        if data is not None:
            data["model_weights"] = {"file": path.name, "sha256": cached[2]}
        return cached[0]

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[Any, dict]:
        """MONAI Label's writer; the result JSON also names the weights used (file name and sha256).

        Args:
            data: the postprocessed request data.
            extension: the mask file type (default: the request's ``result_extension``).
            dtype: the mask pixel type (default: the request's ``result_dtype``).

        Returns:
            the mask file and the result JSON.
        """
        result_file, result_json = super().writer(data, extension, dtype)
        if "model_weights" in data:
            result_json["model_weights"] = data["model_weights"]
        return result_file, result_json
