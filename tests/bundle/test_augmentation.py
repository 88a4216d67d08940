"""train.json's ``extra_augmentation``: a named set from ``extra_augmentations`` appended after the flips and
rotation (before ``train#plain_tensors``, the last transform), checked against the options schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from vmunetv2_monai.bundle.checks import check_options, option_schema

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def _preprocessing(choice: str):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["extra_augmentation"] = choice
    return parser, parser.get_parsed_content("train#preprocessing")


def test_every_set_is_a_schema_choice_and_appended_after_the_base_augmentation() -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    assert parser["extra_augmentation"] == "none"
    assert set(parser["extra_augmentations"]) == set(option_schema()["properties"]["extra_augmentation"]["enum"])
    _, base = _preprocessing("none")
    _, extra = _preprocessing("zoom_intensity")
    names = [type(t).__name__ for t in extra.transforms]
    base_names = [type(t).__name__ for t in base.transforms]
    assert base_names[-2:] == ["RandRotated", "EnsureTyped"]  # the rotation, then train#plain_tensors
    added = ["RandZoomd", "RandScaleIntensityd", "RandAdjustContrastd"]
    assert names == base_names[:-1] + added + base_names[-1:]


def test_zoom_intensity_changes_images_and_keeps_binary_masks() -> None:
    """On a bundled sample: same shapes as without the set, the image differs for some draw, the mask stays 0/1."""
    parser, extra = _preprocessing("zoom_intensity")
    _, base = _preprocessing("none")
    item = parser.get_parsed_content("datalists")["training"][0]
    changed = False
    for seed in range(4):
        set_determinism(seed)
        a = base(dict(item))
        set_determinism(seed)
        b = extra(dict(item))
        assert b["image"].shape == a["image"].shape and b["label"].shape == a["label"].shape
        assert set(torch.unique(torch.as_tensor(b["label"])).tolist()) <= {0.0, 1.0}
        changed |= not torch.allclose(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))
    set_determinism(None)
    assert changed


def test_an_unknown_set_is_named() -> None:
    with pytest.raises(ValueError, match="unknown value 'zoom' for 'extra_augmentation'"):
        check_options({"extra_augmentation": "zoom"})
