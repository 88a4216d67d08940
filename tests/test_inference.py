"""Predictor.from_bundle follows the bundle's inference settings and the overrides a recipe recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.inference import InferenceSettings, Predictor
from vmunetv2_monai.inferers import ResizeInferer

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = VMUNetV2(2, 3, 1, **TINY, keep_unused_stage=False)  # the bundle default
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_default_follows_the_bundles_spatial_mode(checkpoint: Path) -> None:
    """spatial_mode resize (default) -> whole-image resize inference; patch -> sliding window."""
    size = tuple(json.loads((BUNDLE / "configs" / "inference.json").read_text())["image_size"])
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides=TINY)
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == size
    assert pred.settings.threshold == 0.5
    assert isinstance(Predictor(pred.network).inferer, ResizeInferer)  # stand-alone default = bundle default
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides={**TINY, "spatial_mode": "patch"})
    assert isinstance(pred.inferer, SlidingWindowInferer) and tuple(pred.inferer.roi_size) == size


def test_resize_mode_from_overrides(checkpoint: Path) -> None:
    overrides = {**TINY, "inference_mode": "resize", "image_size": [64, 48]}
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides=overrides)
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == (64, 48)
    image = np.random.default_rng(0).random((3, 70, 90), dtype=np.float32)
    logits = pred.logits(image)
    assert logits.shape == (1, 70, 90)
    with torch.no_grad():
        expected = ResizeInferer((64, 48))(torch.from_numpy(image)[None], pred.network)[0].numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert pred.predict(image).shape == (70, 90)


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="unknown inference_mode 'tiles'"):
        Predictor(torch.nn.Identity(), InferenceSettings(inference_mode="tiles"))
