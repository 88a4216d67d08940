"""Checkpoint files: broken files are refused by name and NaN is never loaded (the atomic writes under them:
tests/test_files.py; the checkpoint handlers that keep an earlier model, never save NaN and resume a schedule:
tests/handlers/test_checkpoint.py)."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.checkpoints import load_state_dict, read_checkpoint
from vmunetv2_monai.pretrained.vmamba import load_pretrained_encoder

from .conftest import TINY


def _net() -> VMUNetV2:
    kw = {k: v for k, v in TINY.items() if k != "image_size"}
    return VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, **kw)


class _Pickled:
    pass


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"), (b"this is text\n", "not a PyTorch weights file"), (os.urandom(256), "not a PyTorch weights file"),
    ("pickled", "not a PyTorch weights file"), ("nan", "NaN or Inf"), ("truncated", "not a PyTorch weights file"),
])
def test_bad_checkpoint_files_are_refused_by_name(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    if content == "pickled":
        torch.save({"obj": _Pickled()}, path)
    elif content == "nan":
        state = _net().state_dict()
        state["encoder.patch_embed.proj.weight"][0, 0, 0, 0] = float("nan")
        torch.save(state, path)
    elif content == "truncated":
        torch.save(_net().state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")


def test_pretrained_nan_is_refused_and_partial_match_warns(tmp_path, caplog):
    net = _net()
    enc = {k[len("encoder."):]: v.clone() for k, v in net.state_dict().items() if k.startswith("encoder.")}
    bad = dict(enc)
    first = next(iter(bad))
    bad[first] = torch.full_like(bad[first], float("nan"))
    torch.save({"model": bad}, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="nan.pth.*NaN or Inf"):
        load_pretrained_encoder(_net(), tmp_path / "nan.pth")
    keys = sorted(enc)
    partial = {k: enc[k] for k in keys[: int(0.6 * len(keys))]}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with caplog.at_level(logging.INFO):
        load_pretrained_encoder(_net(), tmp_path / "partial.pth")
    assert any(r.levelno == logging.WARNING and "partial.pth" in r.getMessage() for r in caplog.records)
