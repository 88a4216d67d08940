"""The MONAI Label task reads its weights through ``read_checkpoint`` (issue 26, group K): a foreign file in place of
the model is refused naming it and what it is, never loaded with torch's unsafe advice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ._support import require_monailabel

require_monailabel()
# imported after the check above: the task module imports monailabel
from vmunetv2_monai.label.bundle_config import BundleFiles
from vmunetv2_monai.label.infer import VMUNetV2InferTask

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


@pytest.mark.parametrize("content, reason", [
    (b"not weights\n", "not a PyTorch weights file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 1\n", "git-LFS pointer"),
])
def test_foreign_weights_are_refused_naming_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(content)
    task = VMUNetV2InferTask(BundleFiles.from_dir(tmp_path))
    with pytest.raises(ValueError) as err:
        task._get_network("cpu", None)
    assert str(model) in str(err.value) and reason in str(err.value), err.value
    assert "weights_only=False" not in str(err.value)


def test_weights_holding_nan_are_refused(tmp_path: Path) -> None:
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    torch.save({"w": torch.tensor([1.0, float("nan")])}, model)
    task = VMUNetV2InferTask(BundleFiles.from_dir(tmp_path))
    with pytest.raises(ValueError, match="NaN"):
        task._get_network("cpu", None)
