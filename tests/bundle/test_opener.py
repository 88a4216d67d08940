"""``Bundle``, the one way to open a bundle folder: paths, metadata, labels (one ``channel_def`` rule), parsed configs
and workflows, with missing or broken files named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from vmunetv2_monai.bundle import DEFAULT_BUNDLE, Bundle
from vmunetv2_monai.errors import BundleFileError

REPO = Path(__file__).resolve().parents[2]


def test_default_is_the_checkouts_bundle() -> None:
    bundle = Bundle()
    assert bundle.root == DEFAULT_BUNDLE == REPO / "bundle"
    assert bundle.configs_dir == REPO / "bundle" / "configs"
    assert bundle.model_path == REPO / "bundle" / "models" / "model.pt"
    assert bundle.metadata["name"] and bundle.labels == {"lesion": 1} and bundle.spatial_dims == 2
    assert bundle.channel_def == {0: "background", 1: "lesion"}


def test_config_merges_files_sets_bundle_root_and_overrides(tmp_path: Path) -> None:
    parser = Bundle(REPO / "bundle").config(["train", "evaluate"], {"output_dir": str(tmp_path), "epochs": 3})
    assert isinstance(parser, ConfigParser)
    assert parser["bundle_root"] == str(REPO / "bundle") and parser["epochs"] == 3
    assert parser.get_parsed_content("output_dir") == str(tmp_path) and "_meta_" in parser.config
    assert Bundle().config("inference.json")["bundle_root"] == str(DEFAULT_BUNDLE)


def test_workflow_is_monais_config_workflow(tmp_path: Path) -> None:
    workflow = Bundle().workflow("inference", output_dir=str(tmp_path))
    assert isinstance(workflow, ConfigWorkflow)
    assert workflow.parser["bundle_root"] == str(DEFAULT_BUNDLE) and workflow.parser["output_dir"] == str(tmp_path)


def test_labels_keep_the_metadatas_spelling(tmp_path: Path) -> None:
    shutil.copytree(REPO / "bundle" / "configs", tmp_path / "configs")
    meta = json.loads((tmp_path / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "Background", "2": "tool", "1": "Polyp"}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert Bundle(tmp_path).labels == {"Polyp": 1, "tool": 2}


def test_missing_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nosuch")):
        Bundle(tmp_path / "nosuch")
    (tmp_path / "configs").mkdir()
    with pytest.raises(FileNotFoundError, match="inference.json is missing"):
        Bundle(tmp_path).config("inference")
    (tmp_path / "configs" / "metadata.json").write_text('{"version": ')
    with pytest.raises(BundleFileError, match="metadata.json: not valid JSON"):
        _ = Bundle(tmp_path).metadata
