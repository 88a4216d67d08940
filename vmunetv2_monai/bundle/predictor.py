"""Checkpoint reading, and :class:`Predictor`: the bundle's inference on in-memory images (e.g. decoded DICOM).

The predictor is built from the bundle's ``configs/inference.json`` with :class:`monai.bundle.ConfigParser`, the
caller's overrides applied: ``network_def``, ``intensity_transforms`` (the intensity part of ``load_transforms``),
``inferer`` and ``postprocessing`` (sigmoid, ``threshold``), with ``check_options`` validating the choices. Nothing
of the inference is re-implemented here, so a DICOM image and the same image as a PNG give the same mask.

Input arrays are ``(C, H, W)`` in row-major (Rows, Columns) order, like pydicom's ``pixel_array``, holding what the
bundle's ``read_transforms`` give for an image file: float values on the 8-bit scale [0, 255]. MONAI's image readers
give ``(C, W, H)`` for PNG/JPEG and the network was trained on that order, so the predictor transposes the image to
``(C, W, H)`` before the transforms and the mask back to ``(H, W)``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from .bundle_weights import check_bundle_weights
from .checkpoint_files import check_checkpoint_path, unpickling_reason
from .errors import check_config_files
from .ops import autocast_dtype

logger = logging.getLogger(__name__)

#: The bundle of this source checkout; its ``configs/inference.json`` is the inference path without ``--bundle-dir``.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def find_non_finite(obj: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) checkpoint that hold NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [name for key, value in items for name in find_non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def read_checkpoint(
    path: str | Path, map_location: str | torch.device | None = "cpu", check_finite: bool = True,
    what: str = "checkpoint",
) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong with it.

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for an empty or unreadable file (not a
    PyTorch checkpoint, one holding pickled objects, a git-LFS pointer, a TorchScript archive or a zip archive that
    would expand past a bound, see :func:`~vmunetv2_monai.checkpoint_files.check_checkpoint_file`) and, with
    ``check_finite``, for tensors holding NaN or Inf.
    ``what`` names the file's role in the messages. A bundle's own weights (``models/model.pt``) are compared with
    its ``large_files.yml`` first (:func:`~vmunetv2_monai.bundle_weights.check_bundle_weights`: a WARNING on a
    mismatch).
    """
    path = Path(path)
    check_checkpoint_path(path, what)
    check_bundle_weights(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which would run code from the file: kept at DEBUG only
        logger.debug("torch.load(%s, weights_only=True) refused the file", path, exc_info=err)
        raise ValueError(f"cannot read {what} {path}: not a PyTorch weights file: "
                         f"{unpickling_reason(str(err))}") from None
    except Exception as err:  # torch.load raises many types for foreign files (IndexError, EOFError, ...)
        raise ValueError(f"cannot read {what} {path}: not a PyTorch weights file ({type(err).__name__}: "
                         f"{str(err)[:300]})") from err
    bad = find_non_finite(obj) if check_finite else []
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"{what} {path}: {len(bad)} tensor(s) hold NaN or Inf ({shown}); it comes from a "
                         "diverged training run and cannot be used")
    return obj


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint with :func:`read_checkpoint`; accepts a raw state dict or ``{"state_dict"|"model": ...}``."""
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def inference_config(
    bundle_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    network_kwargs: Mapping[str, Any] | None = None,
) -> ConfigParser:
    """``<bundle_dir>/configs/inference.json`` with ``bundle_root`` set to ``bundle_dir``, then ``overrides`` (config
    id -> value, e.g. the overrides a recipe recorded), then ``network_kwargs`` (``VMUNetV2`` arguments) over its
    ``network_def`` (arguments not given keep the config's values, e.g. ``keep_unused_stage``), then ``device``."""
    path = Path(bundle_dir) / "configs" / "inference.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: the bundle's inference config defines the inference (pass --bundle-dir)")
    metadata = path.parent / "metadata.json"
    # a config or metadata file that is not valid JSON is named (the DICOM service reads metadata.json next)
    check_config_files(path, *([metadata] if metadata.exists() else []))
    parser = ConfigParser()
    parser.read_config(str(path))
    parser["bundle_root"] = str(bundle_dir)
    parser.update(dict(overrides or {}))
    if network_kwargs is not None:
        parser["network_def"] = {**parser["network_def"], **network_kwargs}
    parser["device"] = torch.device(device)
    return parser


class Predictor:
    """Binary segmentation of 2D images with the pieces of a parsed inference config (network in eval mode)."""

    def __init__(self, parser: ConfigParser, network: torch.nn.Module) -> None:
        parser.get_parsed_content("check_options")
        self.device = torch.device(parser.get_parsed_content("device"))
        self.network = network.to(self.device).eval()
        self.intensity = Compose(parser.get_parsed_content("intensity_transforms"))
        self.inferer: Callable[..., torch.Tensor] = parser.get_parsed_content("inferer")
        self.postprocessing: Callable[[dict], dict] = parser.get_parsed_content("postprocessing")
        self.amp_dtype = autocast_dtype(parser.get_parsed_content("amp"), self.device)
        intensity, normalization = parser.get_parsed_content("intensity"), parser.get_parsed_content("normalization")
        if intensity == "fixed":
            intensity = f"fixed {list(parser.get_parsed_content('intensity_range'))}"
        #: The config's intensity rule, as recorded in a SEG's algorithm parameters.
        self.intensity_rule = f"{intensity}, normalization {normalization}"

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        checkpoint: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        network_kwargs: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The bundle's ``network_def`` (with ``network_kwargs`` over it, see :func:`inference_config`) loaded
        (strict) from ``checkpoint``, default the config's ``ckpt_path`` (``models/model.pt`` in the bundle, or under
        the overrides' ``output_dir``)."""
        parser = inference_config(bundle_dir, overrides, device, network_kwargs)
        net = parser.get_parsed_content("network_def", instantiate=True)
        ckpt = Path(checkpoint) if checkpoint else Path(parser.get_parsed_content("ckpt_path"))
        net.load_state_dict(load_state_dict(ckpt), strict=True)
        logger.info("bundle %s (inference.json, %d override(s)): checkpoint %s", bundle_dir, len(overrides or {}), ckpt)
        return cls(parser, net)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        network_kwargs: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """:meth:`from_bundle` of :data:`DEFAULT_BUNDLE` with ``network_kwargs`` (``VMUNetV2`` arguments) over its
        ``network_def``, so every inference and network setting is the bundle's default (``keep_unused_stage``
        false, ...) unless ``network_kwargs`` or ``overrides`` sets it."""
        return cls.from_bundle(DEFAULT_BUNDLE, checkpoint, overrides, device, network_kwargs)

    def _model_logits(self, image_chw: np.ndarray) -> torch.Tensor:
        """``(C, H, W)`` -> ``(out_channels, W, H)`` logits, in MONAI's spatial order."""
        if image_chw.ndim != 3:
            raise ValueError(f"expected (C, H, W), got shape {image_chw.shape}")
        image = torch.as_tensor(np.ascontiguousarray(np.swapaxes(image_chw, 1, 2)), dtype=torch.float32)
        x = torch.as_tensor(self.intensity({"image": image})["image"]).to(self.device)[None]
        with torch.no_grad(), torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.inferer(x, self.network)
        return torch.as_tensor(out[0]).float().cpu()

    def logits(self, image_chw: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` image on the 8-bit scale -> ``(out_channels, H, W)`` float32 logits."""
        return np.ascontiguousarray(np.swapaxes(self._model_logits(image_chw).numpy(), 1, 2))

    def predict(self, image_chw: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` image on the 8-bit scale -> ``(H, W)`` bool mask (the config's ``postprocessing``)."""
        pred = torch.as_tensor(self.postprocessing({"pred": self._model_logits(image_chw)})["pred"])
        if pred.ndim != 2:
            raise ValueError(f"postprocessing gave shape {tuple(pred.shape)}; expected a squeezed (W, H) mask")
        return pred.numpy().T > 0
