"""MONAI Deploy's ``MonaiBundleInferenceOperator`` (monai-deploy-app-sdk 4.0.0) running a copy of ``bundle/``.

The operator's own code does the work: ``compute`` with a directory bundle parses ``configs/inference.json`` and
``configs/metadata.json`` (``BundleConfigNames``), builds ``network`` and loads ``models/model.pt`` with
``strict=True``, drops ``LoadImage*`` from ``preprocessing``, runs ``inferer`` and the postprocessing, and emits an
``Image``. Only the operator's input and output ports are stand-ins (a Holoscan scheduler would call ``compute``
with the same objects). The mask must equal what ``python -m monai.bundle run --config_file configs/inference.json``
writes for the same image (same environment, same scan backend).

These tests need monai-deploy-app-sdk, which lives in its own environment (``bash scripts/setup_deploy.sh`` creates
``.venv-deploy``; run them with ``.venv-deploy/bin/python -m pytest -q tests/deploy``). Elsewhere they skip;
``VMUNETV2_REQUIRE_DEPLOY=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import os

# read once when vmunetv2_monai is first imported: the operator (this process) and monai.bundle run (a subprocess
# with this environment) then use the same scan backend whatever the compiled CPU kernel's state
os.environ["VMUNETV2_SCAN_BACKEND"] = "torch"

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monai.data import MetaTensor
from PIL import Image as PILImage

from ._support import skip_or_fail_without_sdk

pytestmark = pytest.mark.slow  # runs the Deploy SDK's bundle operator on the bundle's network

try:
    from monai.deploy.core import AppContext, Fragment, Image, IOType
    from monai.deploy.operators.monai_bundle_inference_operator import (
        BundleConfigNames,
        IOMapping,
        MonaiBundleInferenceOperator,
    )
except ImportError as e:
    skip_or_fail_without_sdk(e)

REPO = Path(__file__).resolve().parents[2]
BUNDLE_ITEMS = ("LICENSE", "configs", "docs", "large_files.yml", "models")
SAMPLE = REPO / "bundle" / "sample_data" / "images"
IMAGE = sorted(SAMPLE.glob("*.jpg"))[0]


class _Input:
    """The operator's input port: ``receive(name)`` hands over the one in-memory object."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def receive(self, name: str) -> Any:
        return self.value


class _Output:
    """The operator's output port for an in-memory (not DISK) output: ``get`` raises, ``emit`` keeps the value."""

    def __init__(self) -> None:
        self.emitted: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        raise RuntimeError(f"{name}: an in-memory output has no path")

    def emit(self, value: Any, name: str) -> None:
        self.emitted[name] = value


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of bundle/ as the repository tracks it (so that no run writes into the repository)."""
    root = tmp_path_factory.mktemp("deploy") / "vmunetv2"
    for item in BUNDLE_ITEMS:
        src = REPO / "bundle" / item
        if src.is_dir():
            shutil.copytree(src, root / item)
        else:
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / item)
    return root


@pytest.fixture(scope="module")
def expected(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The model-zoo command from the bundle root on IMAGE -> H x W 0/1 mask."""
    work = tmp_path_factory.mktemp("bundle_run")
    (work / "data").mkdir()
    shutil.copy(IMAGE, work / "data" / IMAGE.name)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--dataset_dir", str(work / "data"), "--pred_dir", str(work / "out"), "--overlay", "False"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=bundle)
    assert res.returncode == 0, f"monai.bundle run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    mask = np.asarray(PILImage.open(work / "out" / f"{IMAGE.stem}_mask.png"))
    assert set(np.unique(mask)) == {0, 255}, "all-0 or all-1 mask: the comparison would prove little"
    return (mask > 0).astype(np.uint8)


def _operator(bundle: Path, names: BundleConfigNames) -> MonaiBundleInferenceOperator:
    return MonaiBundleInferenceOperator(
        Fragment(),
        app_context=AppContext({}),
        input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
        output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
        bundle_path=bundle,
        bundle_config_names=names,
        name="vmunetv2",
    )


def _input_image() -> Image:
    """IMAGE as a Deploy ``Image``: (W, H, C) float, MONAI's reader axes, with the channel axis named in its metadata.

    (A plain (W, H, C) ndarray is taken for a channel-less 3D volume by the 4.0.0 operator, so an RGB 2D image has
    to come as an ``Image``.)"""
    rgb = np.asarray(PILImage.open(IMAGE).convert("RGB"), dtype=np.float32)
    return Image(np.ascontiguousarray(rgb.transpose(1, 0, 2)), metadata={"original_channel_dim": -1})


def _input_image_tensor() -> Any:
    """What compute makes of the input Image before preprocessing (a MetaTensor with its metadata)."""
    img = _input_image()
    return MetaTensor.ensure_torch_and_prune_meta(img.asnumpy(), img.metadata())


def test_default_config_names_load_the_bundle_and_infer(bundle: Path, expected: np.ndarray) -> None:
    """Default names (config "inference", ids preprocessing / inferer / postprocessing): the bundle loads and infers
    through the operator's own steps; only emitting the squeezed H x W mask as an Image fails (the 4.0.0 operator
    squeezes a channel axis itself), so compute with the default names stops there."""
    names = BundleConfigNames()
    assert (names.config_names, names.preproc_name, names.postproc_name, names.inferer_name) == (
        ["inference"], "preprocessing", "postprocessing", "inferer")
    op = _operator(bundle, names)
    with pytest.raises(ValueError, match="cannot select an axis to squeeze out"):
        op.compute(_Input(_input_image()), _Output(), None)
    # compute got as far as the prediction: the operator's state holds the loaded bundle
    assert [type(t).__name__ for t in op._preproc.transforms][0] == "EnsureChannelFirstd"  # LoadImaged dropped
    assert type(op._inferer).__name__ == "ResizeInferer"
    inputs = op.pre_process({"image": _input_image_tensor()})
    pred = op.post_process(op.predict(inputs["image"][None])[0], preprocessed_inputs=inputs)["pred"]
    np.testing.assert_array_equal(np.asarray(pred).T, expected)


def test_compute_with_channel_first_postprocessing_emits_the_mask(bundle: Path, expected: np.ndarray) -> None:
    """``postproc_name="postprocessing_channel_first"``: compute runs end to end and emits the mask as an Image."""
    op = _operator(bundle, BundleConfigNames(postproc_name="postprocessing_channel_first"))
    out = _Output()
    op.compute(_Input(_input_image()), out, None)
    mask = out.emitted["pred"]
    assert isinstance(mask, Image)
    arr = mask.asnumpy()
    assert arr.dtype == np.uint8 and arr.shape == expected.T.shape
    np.testing.assert_array_equal(arr.T, expected)
