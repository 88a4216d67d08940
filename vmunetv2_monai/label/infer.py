"""MONAI Label inference task for the VM-UNetV2 bundle (2D RGB in, H x W uint8 mask out)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import Compose, LoadImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored
from monailabel.transform.pre import LoadImageTensord
from monailabel.utils.others.generic import device_map

from ..inference import read_checkpoint
from .bundle_config import BundleFiles, label_map, load_metadata, load_parser, spatial_dims

__all__ = ["RESULT_DTYPES", "RESULT_EXTENSIONS", "InferRequestError", "NoWeightsError", "VMUNetV2InferTask"]

logger = logging.getLogger(__name__)

#: Mask file types a client may ask for (``result_extension``); JPEG would blur a mask, so it is not offered.
RESULT_EXTENSIONS: tuple[str, ...] = (".png", ".nii.gz", ".nii", ".nrrd", ".tif", ".tiff")
#: Mask pixel types a client may ask for (``result_dtype``); the PNG writer takes only integer types.
RESULT_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "int32", "float32")


class InferRequestError(ValueError):
    """An inference request with a parameter the task cannot honour (reported to the client as HTTP 400)."""


class NoWeightsError(RuntimeError):
    """The bundle has no trained weights yet (reported to the client as HTTP 409)."""


class VMUNetV2InferTask(BasicInferTask):
    """Segmentation with the bundle's network, preprocessing, inferer (per inference_mode) and postprocessing.

    The bundle's ``inference.json`` (+ ``monailabel_overrides.json``) is read. MONAI Label's additions: the image
    loader keeps the image metadata, the H x W prediction is restored to the image grid, and the mask is written as
    a uint8 PNG unless the request asks otherwise. Weights are read from ``<bundle>/models/<model_filename>`` with
    :func:`~vmunetv2_monai.inference.read_checkpoint` (the checks of every other reader: foreign files, pickled
    objects, NaN, the bundle's weights hash); without them the task refuses to run instead of serving an untrained
    network.
    """

    def __init__(self, bundle: BundleFiles, conf: dict[str, str] | None = None, preload: bool = False) -> None:
        self.bundle = bundle
        self.metadata = load_metadata(bundle)
        self.parser: ConfigParser = load_parser(bundle, "inference")
        self._parse_lock = threading.Lock()
        self.key_image, _ = next(iter(self.metadata["network_data_format"]["inputs"].items()))
        self.key_pred, _ = next(iter(self.metadata["network_data_format"]["outputs"].items()))
        network = self.parser.get_parsed_content("network_def", instantiate=True)
        super().__init__(
            path=str(bundle.model_path),
            network=network,
            type=InferType.SEGMENTATION,
            labels=label_map(self.metadata),
            dimension=spatial_dims(self.metadata),
            description=str(self.metadata.get("description", "VM-UNetV2")),
            input_key=self.key_image,
            output_label_key=self.key_pred,
            load_strict=True,
            preload=preload,
            config={"result_extension": ".png", "result_dtype": "uint8", "model_filename": bundle.model_files()},
        )
        self.version = str(self.metadata.get("version", ""))

    def info(self) -> dict[str, Any]:
        """Task description for ``GET /info/`` (adds the bundle version and whether weights exist)."""
        info = super().info()
        info["version"] = self.version
        info["trained"] = self.bundle.model_path.is_file()
        return info

    def config(self) -> dict[str, Any]:
        """User-facing options; the list of model files is read fresh (training adds ``model.pt``)."""
        self._config["model_filename"] = self.bundle.model_files()
        return self._config

    def is_valid(self) -> bool:
        """Always listed: before the first training the task exists but answers 409 (no weights)."""
        return True

    # ----------------------------------------------------------------------------------------- request checking
    def validate_request(self, request: dict[str, Any]) -> None:
        """Raise :class:`InferRequestError` for parameters this task cannot honour (before any work is done)."""
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
        name = request.get("model_filename")
        if name is not None:
            self.model_file(name)

    def model_file(self, name: Any) -> str:
        """Path of the model file ``name`` (a bare file name listed in ``models/``); never a path from a request."""
        if isinstance(name, list) and len(name) >= 1:
            name = name[0]
        available = self.bundle.model_files()
        if not isinstance(name, str) or name not in available:
            raise InferRequestError(f"model_filename must be one of {available}, got {name!r}")
        return str(self.bundle.models_dir / name)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict]:
        """Run inference; the result file is an H x W mask with 1 for the foreground (uint8 PNG by default)."""
        self.validate_request(request)
        return super().__call__(request, callbacks)

    # --------------------------------------------------------------------------------------- bundle components
    def _parsed(self, key: str, data: dict[str, Any] | None) -> Any:
        """Instantiate bundle item ``key`` for this request's device (parses are serialised: the parser is shared)."""
        device = data.get("device") if data else None
        with self._parse_lock:
            if device:
                self.parser["device"] = f"$torch.device({str(device)!r})"
            self.parser.parse(True)
            return self.parser.get_parsed_content(key, instantiate=True)

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's preprocessing; ``LoadImaged`` keeps the metadata and also accepts in-memory images."""
        pre = self._parsed("preprocessing", data)
        transforms = list(pre.transforms) if isinstance(pre, Compose) else list(pre)
        result: list[Callable] = []
        for t in transforms:
            if isinstance(t, LoadImaged):
                t._loader.image_only = False
                result.append(LoadImageTensord(keys=t.keys, load_image_d=t))
            else:
                result.append(t)
        return result

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        """The bundle's inferer (whole image resized to image_size, or a sliding window; per inference_mode)."""
        inferer = self._parsed("inferer", data)
        return inferer if inferer is not None else SimpleInferer()

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """Bundle postprocessing (sigmoid, threshold, squeezed to an H x W uint8 mask), then on the image grid."""
        post = self._parsed("postprocessing", data)
        transforms = list(post.transforms) if isinstance(post, Compose) else list(post)
        transforms.append(Restored(keys=self.key_pred, ref_image=self.key_image, has_channel=False))
        return transforms

    # ------------------------------------------------------------------------------------------------ weights
    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        """The network with the chosen weights on ``device``, cached until the weights file changes."""
        name = data.get("model_filename") if data else None
        path = self.model_file(name) if name else str(self.bundle.model_path)
        if not os.path.isfile(path):
            raise NoWeightsError(
                f"the model has no trained weights yet ({path} does not exist): train it first "
                "(POST /train/<model>) or copy a checkpoint there"
            )
        mtime = os.stat(path).st_mtime_ns
        cache_key = (str(device), path)
        cached = self._networks.get(cache_key)
        if not cached or cached[1] != mtime:
            with open(path, "rb") as fp:
                digest = hashlib.sha256(fp.read()).hexdigest()
            network = self.parser.get_parsed_content("network_def", instantiate=True).to(torch.device(device))
            checkpoint = read_checkpoint(path, map_location=torch.device(device))
            state = checkpoint.get(self.model_state_dict, checkpoint) if isinstance(checkpoint, dict) else checkpoint
            network.load_state_dict(state, strict=self.load_strict)
            network.eval()
            logger.info("Loaded weights %s (sha256 %s) on %s", path, digest[:12], device)
            cached = (network, mtime, digest)
            self._networks[cache_key] = cached
        if data is not None:
            data["model_weights"] = {"file": os.path.basename(path), "sha256": cached[2]}
        return cached[0]

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[Any, dict]:
        """MONAI Label's writer; the result JSON also names the weights used (file name and sha256)."""
        result_file, result_json = super().writer(data, extension, dtype)
        if "model_weights" in data:
            result_json["model_weights"] = data["model_weights"]
        return result_file, result_json
