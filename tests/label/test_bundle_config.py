"""How the MONAI Label app reads the bundle (monai only: runs in the main environment as well)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmunetv2_monai.label.bundle_config import (
    BundleError,
    BundleFiles,
    label_map,
    load_metadata,
    load_parser,
    spatial_dims,
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def test_labels_and_dimension_from_metadata() -> None:
    meta = load_metadata(BundleFiles.from_dir(BUNDLE))
    assert label_map(meta) == {"lesion": 1}  # one sigmoid channel: the foreground is 1 in the mask, not 0
    assert spatial_dims(meta) == 2


def test_label_map_softmax_skips_background() -> None:
    meta = {
        "network_data_format": {
            "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "Polyp", "2": "tool"}}}
        }
    }
    assert label_map(meta) == {"polyp": 1, "tool": 2}


def test_configs_merged_in_order_with_monailabel_overrides(tmp_path: Path) -> None:
    files = BundleFiles.from_dir(BUNDLE)
    names = [Path(f).name for f in files.config_files("train")]
    assert names == ["train.json", "monailabel_overrides.json", "monailabel_train_overrides.json"]
    assert [Path(f).name for f in files.config_files("inference")] == ["inference.json", "monailabel_overrides.json"]
    parser = load_parser(files, "train", {"bundle_root": str(tmp_path)})
    assert Path(parser.get_parsed_content("ckpt_path")) == tmp_path / "models" / "model.pt"
    assert parser.get_parsed_content("num_workers") == 0
    assert Path(parser.get_parsed_content("latest_path")).parent != tmp_path / "models"  # not offered as a model
    with pytest.raises(BundleError, match="no evaluation_x config"):
        files.config_files("evaluation_x")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a VM-UNetV2 bundle"):
        BundleFiles.from_dir(tmp_path)
