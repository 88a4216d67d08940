"""Export: ONNX, traced and scripted TorchScript keep any image size and match the eager network."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vmunetv2_monai import VMUNetV2

TINY = {"depths": (1, 1, 1, 1), "dims": 16, "d_state": 4, "mid_channels": 8}
SIZES = [(1, 3, 64, 64), (2, 3, 96, 64), (1, 3, 128, 160)]


@pytest.fixture(scope="module")
def net() -> VMUNetV2:
    torch.manual_seed(0)
    return VMUNetV2(**TINY).eval()


@pytest.mark.slow  # exports, then runs the export at several image sizes (the slowest network tests)
def test_onnx_export_with_dynamic_height_and_width(net: VMUNetV2, tmp_path: Path) -> None:
    path = tmp_path / "net.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shape arithmetic
        torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, input_names=["image"],
                          output_names=["pred"], dynamic_axes={"image": axes, "pred": axes}, opset_version=17)
    session = ort.InferenceSession(str(path))
    for shape in SIZES:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # exports, then runs the export at several image sizes (the slowest network tests)
def test_traced_torchscript_keeps_any_size(net: VMUNetV2, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.randn(1, 3, 64, 64))
    traced.save(str(tmp_path / "net.ts"))
    loaded = torch.jit.load(str(tmp_path / "net.ts"))
    for shape in SIZES:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))


@pytest.mark.parametrize("kwargs", [{}, {"keep_unused_stage": False, "deep_supervision": False}])
def test_scripted_torchscript_matches_eager(kwargs: dict, tmp_path: Path) -> None:
    """torch.jit.script compiles the network (the scan becomes a TorchScript loop); saved, reloaded and compared
    with the eager network at sizes that are not multiples of 32."""
    net = VMUNetV2(**TINY, **kwargs).eval()
    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    loaded = torch.jit.load(str(tmp_path / "net.ts"))
    for shape in [(1, 3, 45, 70), (2, 3, 64, 33)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x))
