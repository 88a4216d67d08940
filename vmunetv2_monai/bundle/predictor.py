""":class:`Predictor`: the bundle's inference on in-memory images (e.g. decoded DICOM).

The predictor is built from the bundle's ``configs/inference.json`` (opened with :class:`~.opener.Bundle`), the
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
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from ..checkpoints import load_state_dict
from ..ops import autocast_dtype
from .opener import DEFAULT_BUNDLE, Bundle

__all__ = ["Predictor"]

logger = logging.getLogger(__name__)


class Predictor:
    """Binary segmentation of 2D images with the pieces of a parsed inference config (network in eval mode).

    Args:
        parser: a parsed ``inference.json`` (:meth:`.opener.Bundle.config`) with ``device`` set.
        network: the network with its weights; moved to ``device`` and put in eval mode.

    Examples::

        predictor = Predictor.from_bundle("bundle")  # models/model.pt
        mask = predictor.predict(image_chw)  # (C, H, W) on the 8-bit scale -> (H, W) bool
    """

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
        bundle_dir: str | os.PathLike | Bundle,
        checkpoint: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        network_kwargs: Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The bundle's inference with its ``network_def`` loaded (strict) from ``checkpoint``.

        Args:
            bundle_dir: the bundle folder (or an opened :class:`~.opener.Bundle`).
            checkpoint: the weights; default the config's ``ckpt_path`` (``models/model.pt`` in the bundle, or
                under the overrides' ``output_dir``).
            overrides: ``inference.json`` config id -> value (e.g. the overrides a recipe recorded).
            device: where the network runs (sets the config's ``device``).
            network_kwargs: ``VMUNetV2`` arguments over the config's ``network_def`` (arguments not given keep the
                config's values, e.g. ``keep_unused_stage``).

        Raises:
            FileNotFoundError: a missing bundle folder, ``inference.json`` or checkpoint (named).
            BundleFileError: a config or metadata file that is not valid JSON (named).
            ValueError: a checkpoint that cannot be used (named, see
                :func:`~vmunetv2_monai.checkpoints.read_checkpoint`).
        """
        bundle = bundle_dir if isinstance(bundle_dir, Bundle) else Bundle(bundle_dir)
        parser = bundle.config("inference", overrides)
        if network_kwargs is not None:
            parser["network_def"] = {**parser["network_def"], **network_kwargs}
        parser["device"] = torch.device(device)
        net = parser.get_parsed_content("network_def", instantiate=True)
        ckpt = Path(checkpoint) if checkpoint else Path(parser.get_parsed_content("ckpt_path"))
        net.load_state_dict(load_state_dict(ckpt), strict=True)
        logger.info("bundle %s (inference.json, %d override(s)): checkpoint %s", bundle.root, len(overrides or {}),
                    ckpt)
        return cls(parser, net)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        network_kwargs: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """:meth:`from_bundle` of this checkout's bundle (:data:`~.opener.DEFAULT_BUNDLE`) with ``checkpoint``, so
        every inference and network setting is the bundle's default (``keep_unused_stage`` false, ...) unless
        ``network_kwargs`` (``VMUNetV2`` arguments over its ``network_def``) or ``overrides`` sets it.

        Args:
            checkpoint: the weights.
            network_kwargs: ``VMUNetV2`` arguments over the config's ``network_def``.
            overrides: ``inference.json`` config id -> value.
            device: where the network runs.
        """
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
        """The network's logits of one image.

        Args:
            image_chw: ``(C, H, W)`` image on the 8-bit scale (row-major, like pydicom's ``pixel_array``).

        Returns:
            ``(out_channels, H, W)`` float32 logits.
        """
        return np.ascontiguousarray(np.swapaxes(self._model_logits(image_chw).numpy(), 1, 2))

    def predict(self, image_chw: np.ndarray) -> np.ndarray:
        """The mask of one image (the config's ``postprocessing``: sigmoid, ``threshold``).

        Args:
            image_chw: ``(C, H, W)`` image on the 8-bit scale (row-major, like pydicom's ``pixel_array``).

        Returns:
            ``(H, W)`` bool mask.
        """
        pred = torch.as_tensor(self.postprocessing({"pred": self._model_logits(image_chw)})["pred"])
        if pred.ndim != 2:
            raise ValueError(f"postprocessing gave shape {tuple(pred.shape)}; expected a squeezed (W, H) mask")
        return pred.numpy().T > 0
