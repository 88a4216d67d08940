"""Predictor takes its inference from the bundle's inference.json, with the overrides a recipe recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.bundle.predictor import Predictor
from vmunetv2_monai.inferers import ResizeInferer

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = VMUNetV2(2, 3, 1, **TINY, keep_unused_stage=False)  # the bundle default
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def test_default_follows_the_bundles_spatial_mode(checkpoint: Path) -> None:
    """spatial_mode resize (default) -> whole-image resize inference; patch -> sliding window; without a bundle
    directory the defaults are this checkout's bundle's."""
    size = tuple(json.loads((BUNDLE / "configs" / "inference.json").read_text())["image_size"])
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides=TINY)
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == size
    assert pred.intensity_rule == "fixed [0, 255], normalization unit"
    net = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, **TINY, "keep_unused_stage": False}
    alone = Predictor.from_checkpoint(checkpoint, net)
    assert isinstance(alone.inferer, ResizeInferer) and alone.inferer.spatial_size == size
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides={**TINY, "spatial_mode": "patch"})
    assert isinstance(pred.inferer, SlidingWindowInferer) and tuple(pred.inferer.roi_size) == size


def test_resize_mode_from_overrides(checkpoint: Path) -> None:
    """Logits are the bundle's: intensity [0, 255] -> [0, 1], the network on MONAI's (W, H) order, resized back."""
    overrides = {**TINY, "inference_mode": "resize", "image_size": [64, 48]}
    pred = Predictor.from_bundle(BUNDLE, checkpoint, overrides=overrides)
    assert isinstance(pred.inferer, ResizeInferer) and pred.inferer.spatial_size == (64, 48)
    image = np.random.default_rng(0).random((3, 70, 90), dtype=np.float32) * 255
    logits = pred.logits(image)
    assert logits.shape == (1, 70, 90)
    with torch.no_grad():
        x = torch.from_numpy(image / 255).transpose(1, 2)[None]
        expected = ResizeInferer((64, 48))(x, pred.network)[0].transpose(1, 2).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pred.predict(image), logits[0] > 0)  # sigmoid > 0.5


def _chain(err: BaseException | None) -> list[BaseException]:
    out = []
    while err is not None:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


@pytest.mark.parametrize("key, value", [("inference_mode", "tiles"), ("normalization", "zscore"),
                                        ("intensity", "percentile"), ("threshold", 1.5)])
def test_bad_settings_are_named(checkpoint: Path, key: str, value: object) -> None:
    """The config's check_options runs: an unknown choice stops with the config id, not a silently skipped step."""
    with pytest.raises(Exception) as err:  # MONAI wraps the expression's ValueError in a RuntimeError
        Predictor.from_bundle(BUNDLE, checkpoint, overrides={**TINY, key: value})
    chain = _chain(err.value)
    assert any(isinstance(e, ValueError) and f"'{key}'" in str(e) for e in chain), chain
