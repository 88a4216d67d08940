"""VMamba v0 checkpoint loading on checkpoints the tests write in that key layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vmunetv2_monai import VMUNetV2, load_pretrained_encoder

TINY = {"dims": 16, "d_state": 4, "mid_channels": 8}


def _v0_checkpoint(path: Path, depths: tuple[int, ...], in_channels: int = 3, rename: bool = False, **kw) -> dict:
    """Write ``{"model": state_dict}`` with VMamba v0 names (no ``encoder.`` prefix, plus head and norm)."""
    src = VMUNetV2(in_channels=in_channels, depths=depths, **{**TINY, **kw})
    sd = {k[len("encoder.") :]: v.clone() for k, v in src.state_dict().items() if k.startswith("encoder.")}
    sd["norm.weight"], sd["head.weight"] = torch.ones(128), torch.randn(10, 128)
    if rename:  # newer VMamba releases renamed the mixer
        sd = {k.replace("self_attention", "op").replace("blocks", "blks"): v for k, v in sd.items()}
    torch.save({"model": sd, "epoch": 238}, path)
    return sd


def test_loads_v0_checkpoint_and_reports_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = _v0_checkpoint(tmp_path / "vmamba_small_e238_ema.pth", depths=(1, 1, 3, 1))  # "small": deeper stage 3
    net = VMUNetV2(depths=(1, 1, 2, 1), **TINY)
    with caplog.at_level(logging.INFO, logger="vmunetv2_monai.pretrained.vmamba"):
        report = load_pretrained_encoder(net, tmp_path / "vmamba_small_e238_ema.pth")
    state = net.state_dict()
    key = "layers.2.blocks.1.self_attention.A_logs"
    torch.testing.assert_close(state["encoder." + key], sd[key])
    torch.testing.assert_close(state["encoder.patch_embed.proj.weight"], sd["patch_embed.proj.weight"])
    assert report.missing == [] and report.mismatched == []
    assert "head.weight" in report.unexpected and "norm.weight" in report.unexpected
    assert any(k.startswith("layers.2.blocks.2.") for k in report.unexpected)  # the surplus stage-3 block
    assert not any(k.startswith("layers.2.blocks.1.") for k in report.unexpected)
    assert len(report.loaded) == len([k for k in state if k.startswith("encoder.")])
    assert "loaded" in caplog.text and "unexpected keys" in caplog.text


def test_grey_input_sums_the_rgb_kernel(tmp_path: Path) -> None:
    sd = _v0_checkpoint(tmp_path / "ckpt.pth", depths=(1, 1, 1, 1))
    net = VMUNetV2(in_channels=1, depths=(1, 1, 1, 1), **TINY)
    load_pretrained_encoder(net, tmp_path / "ckpt.pth")
    torch.testing.assert_close(
        net.encoder.patch_embed.proj.weight.detach(), sd["patch_embed.proj.weight"].sum(1, keepdim=True)
    )


def test_shape_mismatch_is_reported_not_loaded(tmp_path: Path) -> None:
    _v0_checkpoint(tmp_path / "ckpt.pth", depths=(1, 1, 1, 1), ssm_ratio=2.0)
    net = VMUNetV2(depths=(1, 1, 1, 1), **{**TINY, "d_state": 8})  # other state size: A_logs, x_proj differ
    before = net.encoder.layers[0].blocks[0].self_attention.A_logs.detach().clone()
    report = load_pretrained_encoder(net, tmp_path / "ckpt.pth")
    assert any("A_logs" in m for m in report.mismatched)
    torch.testing.assert_close(net.encoder.layers[0].blocks[0].self_attention.A_logs.detach(), before)


def test_newer_format_raises_instead_of_loading_nothing(tmp_path: Path) -> None:
    _v0_checkpoint(tmp_path / "vssm1_tiny.pth", depths=(1, 1, 1, 1), rename=True)
    with pytest.raises(ValueError, match="does not look like a VMamba v0 checkpoint"):
        load_pretrained_encoder(VMUNetV2(depths=(1, 1, 1, 1), **TINY), tmp_path / "vssm1_tiny.pth")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    net = VMUNetV2(depths=(1, 1, 1, 1), **TINY)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained_encoder(net, tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read pretrained checkpoint .*corrupt.pth"):
        load_pretrained_encoder(net, bad)


class _Evil:
    """Anything that is not plain tensors and containers must be refused by weights_only loading."""


def test_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": _Evil()}}, path)
    with pytest.raises(ValueError, match="cannot read pretrained checkpoint"):
        load_pretrained_encoder(VMUNetV2(depths=(1, 1, 1, 1), **TINY), path)
