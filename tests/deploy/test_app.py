"""The MONAI Deploy app ``deploy/vmunetv2_seg_app`` run the way the SDK runs an app locally (``python <app folder>
-i IN -o OUT -m MODEL``, or the MAP's ``HOLOSCAN_*`` variables), with every model path a user would give: the bundle
folder, ``models/model.pt``, an exported ``model.ts``, from ``bundle/`` with the default ``models``, and a MAP model
repository. Each run's masks must equal ``python -m monai.bundle run --config_file configs/inference.json`` on the
same images. Paths the app cannot use must fail with an error naming them.

Needs ``.venv-deploy`` (``bash scripts/setup_deploy.sh``); skips elsewhere unless ``VMUNETV2_REQUIRE_DEPLOY=1``.
"""

from __future__ import annotations

import json
import os

os.environ["VMUNETV2_SCAN_BACKEND"] = "torch"  # the app and monai.bundle run (subprocesses) use the same backend

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from ._support import skip_or_fail_without_sdk

try:
    import monai.deploy.operators.monai_bundle_inference_operator  # noqa: F401
except ImportError as e:
    skip_or_fail_without_sdk(e)

import torch

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "deploy" / "vmunetv2_seg_app"
BUNDLE_ITEMS = ("LICENSE", "configs", "docs", "large_files.yml", "models")
IMAGES = sorted((REPO / "bundle" / "sample_data" / "images").glob("*.jpg"))[:2]
TIMEOUT = 600

sys.path.insert(0, str(APP))
from model_path import ModelPathError, resolve_model  # noqa: E402 (the app folder is on sys.path only now)

pytestmark = pytest.mark.slow  # runs the Deploy app and python -m monai.bundle in subprocesses


def _copy_bundle(dest: Path) -> Path:
    for item in BUNDLE_ITEMS:
        src = REPO / "bundle" / item
        if src.is_dir():
            shutil.copytree(src, dest / item)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / item)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(PILImage.open(p)) for p in sorted(folder.glob("*_mask.png"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of bundle/ (``work/vmunetv2``), two sample images (``work/vmunetv2/data``) and ``work/export/model.ts``
    from ``ckpt_export`` (outside the bundle)."""
    root = tmp_path_factory.mktemp("deploy_app")
    bundle = _copy_bundle(root / "vmunetv2")
    (bundle / "data").mkdir()
    for image in IMAGES:
        shutil.copy(image, bundle / "data" / image.name)
    (root / "export").mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath",
           str(root / "export" / "model.ts"), "--ckpt_file", "models/model.pt", "--meta_file",
           "configs/metadata.json", "--config_file", "configs/inference.json"]
    res = _run(cmd, bundle)
    assert res.returncode == 0, f"ckpt_export failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return root


@pytest.fixture(scope="module")
def expected(work: Path) -> dict[str, np.ndarray]:
    """``monai.bundle run`` from the bundle root on the two images: name -> 0/255 mask."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir",
           "data", "--pred_dir", str(work / "expected"), "--overlay", "False", "--num_workers", "0"]
    res = _run(cmd, work / "vmunetv2")
    assert res.returncode == 0, f"monai.bundle run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    masks = _masks(work / "expected")
    assert len(masks) == len(IMAGES)
    for mask in masks.values():
        assert set(np.unique(mask)) == {0, 255}, "all-0 or all-1 mask: the comparison would prove little"
    return masks


def _case(work: Path, case: str) -> tuple[list[str], Path, dict[str, str]]:
    """(command, working folder, extra environment) of one way to call the app."""
    bundle, data = work / "vmunetv2", work / "vmunetv2" / "data"
    out = work / f"out_{case}"
    app = [sys.executable, str(APP), "-i", str(data), "-o", str(out)]
    if case == "bundle_folder":
        return [*app, "-m", str(bundle)], work, {}
    if case == "model_pt":
        return [*app, "-m", str(bundle / "models" / "model.pt")], work, {}
    if case == "model_ts":
        return [*app, "-m", str(work / "export" / "model.ts")], work, {}
    if case == "from_bundle_default_models":  # README style: from the bundle root, relative paths, no -m
        return [sys.executable, str(APP / "app.py"), "-i", "data", "-o", str(out)], bundle, {}
    if case == "from_bundle_models_pt":
        return [sys.executable, str(APP), "-i", "data", "-o", str(out), "-m", "models/model.pt"], bundle, {}
    if case == "map_environment":  # a MAP: no arguments, HOLOSCAN_* paths, model repository <models>/<name>/model.ts
        repo = work / "map_models"
        (repo / "model").mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "export" / "model.ts", repo / "model" / "model.ts")
        env = {"HOLOSCAN_INPUT_PATH": str(data), "HOLOSCAN_OUTPUT_PATH": str(out), "HOLOSCAN_MODEL_PATH": str(repo)}
        return [sys.executable, str(APP)], work, env
    raise ValueError(case)


CASES = ["bundle_folder", "model_pt", "model_ts", "from_bundle_default_models", "from_bundle_models_pt",
         "map_environment"]


@pytest.mark.parametrize("case", CASES)
def test_app_masks_equal_bundle_run(work: Path, expected: dict[str, np.ndarray], case: str) -> None:
    cmd, cwd, env = _case(work, case)
    res = _run(cmd, cwd, env)
    log = res.stdout[-4000:] + res.stderr[-4000:]
    assert res.returncode == 0, f"app failed ({case}):\n{log}"
    got = _masks(work / f"out_{case}")
    assert sorted(got) == sorted(expected), log
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name], mask, err_msg=f"{case}: {name}")


def test_checkpoint_path_is_the_file_given(work: Path, expected: dict[str, np.ndarray]) -> None:
    """``-m models/other.pt`` runs exactly that state dict (here every 1-element bias at +1000: all lesion), even
    next to ``models/model.pt`` and a ``models/model.ts`` that the SDK's folder loading would prefer."""
    bundle = _copy_bundle(work / "other_bundle")
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    biased = {k: (v + 1000.0 if k.endswith("bias") and v.numel() == 1 else v) for k, v in state.items()}
    torch.save(biased, bundle / "models" / "other.pt")
    shutil.copy(work / "export" / "model.ts", bundle / "models" / "model.ts")
    out = work / "out_other"
    res = _run([sys.executable, str(APP), "-i", str(work / "vmunetv2" / "data"), "-o", str(out), "-m",
                str(bundle / "models" / "other.pt")], work)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    got = _masks(out)
    assert sorted(got) == sorted(expected)
    assert all(np.all(mask == 255) for mask in got.values())


def test_unusable_model_path_fails_naming_it(work: Path) -> None:
    """The app exits with status 2 and an error naming the path (no traceback from the SDK): here ``-m`` is the
    images folder."""
    data = work / "vmunetv2" / "data"
    res = _run([sys.executable, str(APP), "-i", str(data), "-o", str(work / "out_bad"), "-m", str(data)], work)
    assert res.returncode == 2, res.stdout[-4000:] + res.stderr[-4000:]
    assert f"model path {data}: folder is not a bundle" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_resolve_model_refuses_what_it_cannot_run(work: Path, tmp_path: Path) -> None:
    cases: dict[Path, str] = {}
    cases[tmp_path / "missing"] = "does not exist"
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.txt").write_text("a")
    (tmp_path / "two" / "b.txt").write_text("b")
    cases[tmp_path / "two"] = "folder is not a bundle"
    loose = tmp_path / "model.pt"
    shutil.copy(work / "vmunetv2" / "models" / "model.pt", loose)
    cases[loose] = "must sit in a bundle's models/ folder"
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    cases[text] = "not a bundle folder, checkpoint or TorchScript file"
    bare_ts = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(bare_ts))
    cases[bare_ts] = "TorchScript file without extra/metadata.json, extra/inference.json"
    for path, message in cases.items():
        with pytest.raises(ModelPathError, match="model path") as err:
            resolve_model(path)
        assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_resolve_model_kinds(work: Path) -> None:
    bundle = work / "vmunetv2"
    assert resolve_model(bundle).kind == "bundle" and resolve_model(bundle).model is None
    assert resolve_model(bundle / "models").bundle_path == bundle.resolve()
    pt = resolve_model(bundle / "models" / "model.pt")
    assert (pt.kind, pt.bundle_path) == ("checkpoint", bundle.resolve()) and pt.model.predictor is not None
    ts = resolve_model(work / "export" / "model.ts")
    assert (ts.kind, type(ts.model).__name__) == ("torchscript", "TorchScriptModel")


def test_map_layout() -> None:
    """The MAP inputs of the SDK's packaging guide: an app folder with ``__main__.py`` and ``app.py``, ``app.yaml``
    with the keys the packager reads (its version and docs/deploy.md's tag the bundle's), and a requirements file
    whose pins match ``requirements-deploy.txt``."""
    assert (APP / "__main__.py").is_file() and (APP / "app.py").is_file()
    config = yaml.safe_load((APP / "app.yaml").read_text())
    assert config["application"]["title"]
    version = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())["version"]
    assert str(config["application"]["version"]) == version, "app.yaml's version must be the bundle's"
    assert f"vmunetv2-seg:{version}" in (REPO / "docs" / "deploy.md").read_text(), "docs/deploy.md's MAP tag"
    assert {"cpu", "memory"} <= set(config["resources"])

    def pins(path: Path) -> dict[str, str]:
        lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        return dict(ln.split("==", 1) for ln in lines if "==" in ln)

    app_pins, deploy_pins = pins(APP / "requirements.txt"), pins(REPO / "requirements-deploy.txt")
    assert {"torch", "monai", "numpy", "pytorch-ignite", "einops"} <= set(app_pins)
    assert {k: deploy_pins.get(k) for k in app_pins} == app_pins
