"""The MONAI Label app's bundle and weights files (issue 26, group K): a bundle whose metadata is missing or not JSON
is named when the app starts; a foreign file in place of the model is refused naming it and what it is, never
loaded with torch's unsafe advice; weights holding NaN are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ._support import require_monailabel

require_monailabel()
# imported after the check above: the app modules import monailabel
from vmunetv2_monai.errors import BundleFileError  # noqa: E402
from vmunetv2_monai.label.app import VMUNetV2LabelApp  # noqa: E402
from vmunetv2_monai.label.infer import VMUNetV2InferTask  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def _bundle_with_model(root: Path, content: bytes | None = None) -> Path:
    """A copy of the bundle's configs with ``models/model.pt`` holding ``content`` (None: left to the caller)."""
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    if content is not None:
        (root / "models" / "model.pt").write_bytes(content)
    return root / "models" / "model.pt"


def test_not_a_bundle_is_named(tmp_path: Path) -> None:
    with pytest.raises(BundleFileError) as err:
        VMUNetV2LabelApp(str(tmp_path / "app"), str(tmp_path / "studies"), {"bundle": str(tmp_path)})
    assert str(tmp_path / "configs" / "metadata.json") in str(err.value), err.value
    assert "does not exist" in str(err.value), err.value


def test_metadata_that_is_not_json_is_named(tmp_path: Path) -> None:
    _bundle_with_model(tmp_path)
    (tmp_path / "configs" / "metadata.json").write_text('{"version": ')
    with pytest.raises(BundleFileError) as err:
        VMUNetV2LabelApp(str(tmp_path / "app"), str(tmp_path / "studies"), {"bundle": str(tmp_path)})
    assert f"cannot read {tmp_path / 'configs' / 'metadata.json'}: not valid JSON" in str(err.value), err.value


@pytest.mark.parametrize("content, reason", [
    (b"not weights\n", "not a PyTorch weights file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 1\n", "git-LFS pointer"),
])
def test_foreign_weights_are_refused_naming_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    model = _bundle_with_model(tmp_path, content)
    task = VMUNetV2InferTask(tmp_path, {})
    with pytest.raises(ValueError) as err:
        task._get_network("cpu", None)
    assert str(model) in str(err.value) and reason in str(err.value), err.value
    assert "weights_only=False" not in str(err.value)


def test_weights_holding_nan_are_refused(tmp_path: Path) -> None:
    model = _bundle_with_model(tmp_path)
    torch.save({"w": torch.tensor([1.0, float("nan")])}, model)
    task = VMUNetV2InferTask(tmp_path, {})
    with pytest.raises(ValueError, match="NaN"):
        task._get_network("cpu", None)
