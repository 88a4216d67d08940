"""Small stand-alone predictor: VM-UNetV2 + checkpoint -> binary mask, the same way the bundle infers.

Preprocessing and post-processing mirror the bundle's inference config: the RGB uint8 image scaled to
[0, 1] (divided by 255), :class:`~vmunetv2_monai.inferers.ResizeInferer` at ``image_size`` 256x256 (the bundle's
default ``spatial_mode resize``) or, with ``inference_mode="sliding_window"``, MONAI ``SlidingWindowInferer``
(roi 256x256, gaussian blending), sigmoid, threshold 0.5. Arrays here are ``(C, H, W)`` / ``(H, W)`` in
row-major (Rows, Columns) order, like pydicom's ``pixel_array``; nothing is transposed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer

from .inferers import ResizeInferer
from .networks import VMUNetV2

logger = logging.getLogger(__name__)

#: Network arguments of the default (paper) configuration used by the bundle.
DEFAULT_NETWORK_KWARGS: dict[str, Any] = {
    "spatial_dims": 2,
    "in_channels": 3,
    "out_channels": 1,
    "depths": (2, 2, 9, 2),
    "dims": 96,
    "d_state": 16,
    "mid_channels": 48,
}


@dataclass
class InferenceSettings:
    """Inferer and post-processing settings (defaults match the bundle's inference config)."""

    inference_mode: str = "resize"
    image_size: tuple[int, int] = (256, 256)
    roi_size: tuple[int, int] = (256, 256)
    sw_batch_size: int = 1
    overlap: float = 0.25
    mode: str = "gaussian"
    threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)


def build_network(network_kwargs: Mapping[str, Any] | None = None) -> VMUNetV2:
    """Build a VM-UNetV2 from keyword arguments (the bundle's ``network_def`` arguments, without ``_target_``)."""
    kwargs = dict(DEFAULT_NETWORK_KWARGS if network_kwargs is None else network_kwargs)
    kwargs.pop("_target_", None)
    return VMUNetV2(**kwargs)


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
    PyTorch checkpoint, or one holding pickled objects) and, with ``check_finite``, for tensors holding NaN or Inf.
    ``what`` names the file's role in the messages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): an interrupted copy or download?")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
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


class Predictor:
    """Binary segmentation of 2D images with VM-UNetV2 (eval mode, CPU or a given device)."""

    def __init__(
        self,
        network: torch.nn.Module,
        settings: InferenceSettings | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.settings = settings or InferenceSettings()
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if self.settings.inference_mode == "resize":
            self.inferer: Inferer = ResizeInferer(self.settings.image_size)
        elif self.settings.inference_mode == "sliding_window":
            self.inferer = SlidingWindowInferer(
                roi_size=self.settings.roi_size,
                sw_batch_size=self.settings.sw_batch_size,
                overlap=self.settings.overlap,
                mode=self.settings.mode,
            )
        else:
            raise ValueError(f"unknown inference_mode {self.settings.inference_mode!r}: "
                             "choose 'sliding_window' or 'resize'")

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        network_kwargs: Mapping[str, Any] | None = None,
        settings: InferenceSettings | None = None,
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """Build the network, load ``checkpoint`` (strict) and wrap it."""
        net = build_network(network_kwargs)
        net.load_state_dict(load_state_dict(checkpoint), strict=True)
        logger.info("loaded checkpoint %s", checkpoint)
        return cls(net, settings=settings, device=device)

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        checkpoint: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """The bundle's ``network_def`` (``configs/common.json`` merged with ``configs/inference.json``) and,
        unless ``settings`` is given, its ``inference_mode``, ``image_size``, ``roi_size``, ``sw_overlap`` and
        ``threshold``. ``overrides`` (config id -> value) are applied first, e.g. the overrides a recipe recorded.

        ``checkpoint`` defaults to ``models/model.pt`` inside the bundle.
        """
        from monai.bundle import ConfigParser

        configs = Path(bundle_dir) / "configs"
        files = [str(f) for f in (configs / "common.json", configs / "inference.json") if f.is_file()]
        if not files:
            raise FileNotFoundError(f"no configs/common.json or configs/inference.json in {bundle_dir}")
        parser = ConfigParser()
        parser.read_config(files)
        parser.update(dict(overrides or {}))
        net = parser.get_parsed_content("network_def", instantiate=True)
        if kwargs.get("settings") is None:
            kwargs["settings"] = InferenceSettings(
                inference_mode=parser.get_parsed_content("inference_mode"),
                image_size=tuple(parser.get_parsed_content("image_size")),
                roi_size=tuple(parser.get_parsed_content("roi_size")),
                overlap=float(parser.get_parsed_content("sw_overlap")),
                threshold=float(parser.get_parsed_content("threshold")),
            )
        ckpt = Path(checkpoint) if checkpoint else Path(bundle_dir) / "models" / "model.pt"
        net.load_state_dict(load_state_dict(ckpt), strict=True)
        logger.info("bundle %s: network_def from %s, checkpoint %s", bundle_dir, files, ckpt)
        return cls(net, **kwargs)

    @staticmethod
    def scale_rgb_uint8(image_hwc: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1] (divided by 255)."""
        if image_hwc.dtype != np.uint8 or image_hwc.ndim != 3 or image_hwc.shape[-1] != 3:
            raise ValueError(f"expected (H, W, 3) uint8, got {image_hwc.shape} {image_hwc.dtype}")
        return np.ascontiguousarray(np.moveaxis(image_hwc, -1, 0), dtype=np.float32) / np.float32(255.0)

    @torch.no_grad()
    def logits(self, image_chw: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float image in [0, 1] -> ``(out_channels, H, W)`` float32 logits."""
        if image_chw.ndim != 3:
            raise ValueError(f"expected (C, H, W), got shape {image_chw.shape}")
        x = torch.as_tensor(np.ascontiguousarray(image_chw, dtype=np.float32), device=self.device)[None]
        out = self.inferer(x, self.network)
        return out[0].float().cpu().numpy()

    def predict(self, image_chw: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` float image in [0, 1] -> ``(H, W)`` bool mask (sigmoid > threshold of channel 0)."""
        prob = torch.sigmoid(torch.from_numpy(self.logits(image_chw)[0]))
        return (prob > self.settings.threshold).numpy()
