"""Bundle export commands: onnx_export (dynamic H/W) matches onnxruntime, ckpt_export (trace) loads and matches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vmunetv2_monai import VMUNetV2

pytestmark = pytest.mark.slow  # trains a network and runs python -m monai.bundle export in subprocesses

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8}


def _export(cmd: str, tmp_path: Path, out: Path, extra: list[str]) -> None:
    configs = BUNDLE / "configs"
    args = [sys.executable, "-m", "monai.bundle", cmd, "network_def", "--filepath", str(out),
            "--ckpt_file", str(tmp_path / "model.pt"), "--meta_file", str(configs / "metadata.json"),
            "--config_file", f"['{configs / 'inference.json'}']",
            "--bundle_root", str(BUNDLE), "--input_shape", "[1,3,64,64]", "--use_trace", "True"]
    for key, value in TINY.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    proc = subprocess.run(args + extra, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()


@pytest.fixture()
def trained(tmp_path: Path) -> VMUNetV2:
    torch.manual_seed(3)
    net = VMUNetV2(**TINY, keep_unused_stage=False).eval()  # the bundle default
    torch.save(net.state_dict(), tmp_path / "model.pt")
    return net


def test_onnx_export_matches_pytorch(tmp_path: Path, trained: VMUNetV2) -> None:
    axes = "{0: 'batch', 2: 'height', 3: 'width'}"
    kwargs = (f"{{'dynamo': False, 'opset_version': 17, 'input_names': ['image'], 'output_names': ['pred'], "
              f"'dynamic_axes': {{'image': {axes}, 'pred': {axes}}}}}")
    _export("onnx_export", tmp_path, tmp_path / "model.onnx", ["--converter_kwargs", kwargs])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    x = torch.randn(1, 3, 96, 160)  # another size than the one traced
    with torch.no_grad():
        expected = trained(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


def test_ckpt_export_torchscript_by_trace(tmp_path: Path, trained: VMUNetV2) -> None:
    _export("ckpt_export", tmp_path, tmp_path / "model.ts", [])
    module = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(module(x), trained(x))
