"""This package's MONAI Label app (the stock bundle tasks plus what the stock app lacks) over REST: a real server on
127.0.0.1 with ``--uvicorn_app vmunetv2_monai.label.server:app`` serving a tiny copy of the bundle on real Kvasir
images.

One server per module (started and stopped by the ``server`` fixture, readiness bounded by SERVER_START_TIMEOUT);
the tests run in file order and share it: info (with the ``uncertainty`` strategy), inference parity with
``monai.bundle run`` (main environment) also for an uploaded image, the 4xx answers, 409 without weights, active
learning, saving a final label, training with the report of the images used, and inference with the new weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._servers import free_port

from ._support import (
    MAIN_PYTHON_ENV,
    binary_png,
    local_datastore,
    require_monailabel,
    running_server,
    skip_or_fail,
)

require_monailabel()

# imported after the check above: requests comes with monailabel, and the app modules import monailabel
import requests  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vmunetv2_monai.bundle import Bundle  # noqa: E402
from vmunetv2_monai.label import APP_DIR  # noqa: E402

pytestmark = pytest.mark.slow  # starts a MONAI Label server

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
KVASIR = REPO / "tests" / "data" / "kvasir_sample"
MODEL = "vmunetv2"
SERVER_START_TIMEOUT = 180.0
REQUEST_TIMEOUT = 120.0
# Small network and window so that CPU inference and a training epoch take seconds; the torch scan backend in
# both environments so that both compute the same thing.
TINY = {
    "depths": [1, 1, 1, 1],
    "dims": 16,
    "d_state": 4,
    "mid_channels": 8,
    "drop_path_rate": 0.0,
    "scan_backend": "torch",
    "image_size": [64, 64],
    "batch_size": 2,
    "learning_rate": 0.01,
    "num_workers": 0,
}
IMAGES = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:4]
LABELLED = IMAGES[:2]  # final labels present at start-up
TO_LABEL = IMAGES[2]  # gets its final label through PUT /datastore/label
QUERY = IMAGES[3]  # never labelled; used for inference


def _state_dict(checkpoint: dict) -> dict:
    """The bundle's savers write a raw state dict; the test's initial checkpoint nests it under "model"."""
    return checkpoint.get("model", checkpoint)


def _png_array(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monailabel")


@pytest.fixture(scope="module")
def bundle(workspace: Path) -> Path:
    """A copy of the repository's bundle configs with the tiny settings and a seeded, untrained checkpoint."""
    root = workspace / "bundle"
    shutil.copytree(REPO / "bundle" / "configs", root / "configs")
    (root / "models").mkdir()
    _write_tiny(root, TINY)
    torch.manual_seed(20240601)
    parser = Bundle(root).config("inference")
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    torch.save({"model": network.state_dict()}, root / "models" / "model.pt")
    # An untrained network's probabilities sit in a narrow band, all on one side of 0.5: put the threshold in the
    # widest gap between the query image's probabilities (20th-80th percentile), so that the mask is not empty and
    # no pixel lies close to the threshold.
    x = parser.get_parsed_content("preprocessing", instantiate=True)({"image": str(_image(QUERY))})["image"]
    with torch.no_grad():
        probs = torch.sigmoid(parser.get_parsed_content("inferer", instantiate=True)(x[None], network)).flatten()
    probs = probs.double().sort().values
    lo, hi = int(0.2 * probs.numel()), int(0.8 * probs.numel())
    i = int(torch.argmax(probs[lo + 1 : hi] - probs[lo : hi - 1]))
    _write_tiny(root, {**TINY, "threshold": float(probs[lo + i] + probs[lo + i + 1]) / 2})
    return root


def _image(name: str) -> Path:
    return KVASIR / "images" / f"{name}.jpg"


def _write_tiny(root: Path, settings: dict) -> None:
    """The settings over the repository's ``inference.json`` and ``train.json`` in the copy ``root`` (the stock tasks
    read each alone)."""
    for name in ("inference.json", "train.json"):
        config = json.loads((REPO / "bundle" / "configs" / name).read_text())
        (root / "configs" / name).write_text(json.dumps({**config, **settings}, indent=2))


@pytest.fixture(scope="module")
def studies(workspace: Path) -> Path:
    """A local datastore with four real Kvasir images, two of them with final labels."""
    return local_datastore(workspace / "studies", [_image(n) for n in IMAGES],
                           [KVASIR / "masks" / f"{n}.jpg" for n in LABELLED])


@pytest.fixture(scope="module")
def server(workspace: Path, bundle: Path, studies: Path):
    """``monailabel start_server`` on a free loopback port; yields the base URL, stops the server afterwards."""
    app_dir = workspace / "app"  # a copy of the app entry point, so that the server's logs/ stay in the tmp dir
    app_dir.mkdir()
    shutil.copy(APP_DIR / "main.py", app_dir / "main.py")
    port = free_port()
    # what the `monailabel` CLI script runs, with this interpreter rather than the first `python` on PATH
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies)]
    cmd += ["--conf", "bundle", str(bundle)]
    cmd += ["--uvicorn_app", "vmunetv2_monai.label.server:app", "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, MONAI_LABEL_DATASTORE_AUTO_RELOAD="true", PYTHONUNBUFFERED="1")
    with running_server(cmd, f"http://127.0.0.1:{port}", workspace / "server.log", workspace, env,
                        SERVER_START_TIMEOUT) as base:
        yield base


def _bundle_run_mask(workspace: Path, bundle: Path, image: str, tag: str) -> np.ndarray:
    """``python -m monai.bundle run`` (main environment) on one image with the bundle's checkpoint -> 0/1 mask."""
    main_python = os.environ.get(MAIN_PYTHON_ENV, "")
    if not main_python or not Path(main_python).is_file():
        skip_or_fail(f"{MAIN_PYTHON_ENV} does not name the main environment's python (got {main_python!r})")
    data = workspace / f"bundle_run_{tag}" / "data"
    out = workspace / f"bundle_run_{tag}" / "out"
    data.mkdir(parents=True)
    shutil.copy(KVASIR / "images" / f"{image}.jpg", data / f"{image}.jpg")
    configs = bundle / "configs"
    cmd = [main_python, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json")]
    cmd += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    cmd += ["--bundle_root", str(bundle), "--dataset_dir", str(data)]
    cmd += ["--ckpt_path", str(bundle / "models" / "model.pt")]
    cmd += ["--output_dir", str(out), "--overlay", "False"]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=workspace)
    assert res.returncode == 0, f"monai.bundle run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    mask = np.asarray(Image.open(out / "predictions" / f"{image}_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    return (mask > 0).astype(np.uint8)


def _infer(server: str, image: str, params: dict | None = None) -> requests.Response:
    return requests.post(
        f"{server}/infer/{MODEL}",
        params={"image": image, "output": "image"},
        data={"params": json.dumps(params or {})},
        timeout=REQUEST_TIMEOUT,
    )


def _weights_used(server: str) -> str:
    """sha256 of the weights file the server used for an inference on the query image (from the result JSON)."""
    res = requests.post(
        f"{server}/infer/{MODEL}",
        params={"image": QUERY, "output": "json"},
        data={"params": "{}"},
        timeout=REQUEST_TIMEOUT,
    )
    assert res.status_code == 200, res.text
    used = res.json()["model_weights"]
    assert used["file"] == "model.pt"
    return used["sha256"]


def test_info_lists_model_2d_with_labels(server: str) -> None:
    info = requests.get(f"{server}/info/", timeout=30).json()
    model = info["models"][MODEL]
    assert model["dimension"] == 2
    assert model["labels"] == {"lesion": 1}
    assert model["type"] == "segmentation"
    assert MODEL in info["trainers"]
    assert {"random", "first", "uncertainty"} <= set(info["strategies"])
    assert info["labels"] == ["lesion"]


def test_infer_matches_monai_bundle_run(server: str, workspace: Path, bundle: Path) -> None:
    res = _infer(server, QUERY)
    assert res.status_code == 200, res.text
    rest = _png_array(res.content)
    h, w = np.asarray(Image.open(KVASIR / "images" / f"{QUERY}.jpg")).shape[:2]
    assert rest.shape == (h, w) and rest.dtype == np.uint8
    assert set(np.unique(rest)) <= {0, 1}
    expected = _bundle_run_mask(workspace, bundle, QUERY, "initial")
    assert 0 < int(expected.sum()) < expected.size, "degenerate test checkpoint: all-0 or all-1 mask"
    np.testing.assert_array_equal(rest, expected)
    logger.info("REST mask == bundle-run mask: %d foreground pixels of %d", int(rest.sum()), rest.size)
    # the same image uploaded instead of referenced by id gives the same mask
    with open(KVASIR / "images" / f"{QUERY}.jpg", "rb") as fp:
        up = requests.post(
            f"{server}/infer/{MODEL}",
            params={"output": "image"},
            files={"file": (f"{QUERY}.jpg", fp, "image/jpeg")},
            data={"params": "{}"},
            timeout=REQUEST_TIMEOUT,
        )
    assert up.status_code == 200, up.text
    np.testing.assert_array_equal(_png_array(up.content), expected)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("post", "/infer/no_such_model", {"params": {"image": QUERY}, "data": {"params": "{}"}}, 404, "unknown model"),
        ("post", f"/infer/{MODEL}", {"params": {"image": "no_such_image"}, "data": {"params": "{}"}}, 404, "not in"),
        (
            "post",
            f"/infer/{MODEL}",
            {"files": {"file": ("broken.png", b"this is not an image", "image/png")}, "data": {"params": "{}"}},
            400,
            "cannot read",
        ),
        (
            "post",
            f"/infer/{MODEL}",
            {"params": {"image": QUERY}, "data": {"params": json.dumps({"result_dtype": "complex128"})}},
            400,
            "result_dtype",
        ),
        (
            "post",
            f"/infer/{MODEL}",
            {"params": {"image": QUERY}, "data": {"params": "{not json"}},
            400,
            "malformed JSON",
        ),
        (
            "post",
            f"/infer/{MODEL}",
            {"params": {"image": QUERY}, "data": {"params": json.dumps({"model_filename": "../../etc/passwd"})}},
            400,
            "model_filename",
        ),
        (
            "post",
            f"/infer/{MODEL}",
            {"params": {"image": QUERY}, "data": {"params": json.dumps({"result_extension": ".jpg"})}},
            400,
            "result_extension",
        ),
        (
            "post",
            f"/infer/{MODEL}",
            {"params": {"image": QUERY}, "data": {"params": json.dumps({"device": "nonsense"})}},
            400,
            "unknown device",
        ),
        ("post", f"/train/{MODEL}", {"params": {"run_sync": "true"}, "json": {"max_epochs": 0}}, 400, "max_epochs"),
        (
            "post",
            f"/train/{MODEL}",
            {"params": {"run_sync": "true"}, "json": {"model_filename": "../x.pt"}},
            400,
            "model_filename",
        ),
        ("post", f"/train/{MODEL}", {"params": {"run_sync": "true"}, "json": {"val_split": 2}}, 400, "val_split"),
        ("post", "/train/no_such_model", {"params": {"run_sync": "true"}, "json": {}}, 404, "unknown model"),
        (
            "put",
            "/datastore/label",
            {"params": {"image": QUERY, "tag": "../../escaped"}, "files": {"label": ("x.png", b"x", "image/png")}},
            400,
            "label tag",
        ),
        (
            "put",
            "/datastore/label",
            {"params": {"image": "no_such_image", "tag": "final"}, "files": {"label": ("x.png", b"x", "image/png")}},
            404,
            "not found",
        ),
    ],
)
def test_bad_requests_get_4xx_and_server_keeps_serving(
    server: str, method: str, path: str, kwargs: dict, status: int, needle: str
) -> None:
    res = getattr(requests, method)(f"{server}{path}", timeout=REQUEST_TIMEOUT, **kwargs)
    assert res.status_code == status, res.text
    assert needle in res.json()["detail"]
    assert requests.get(f"{server}/info/", timeout=30).status_code == 200


def test_infer_without_weights_is_409(server: str, bundle: Path, workspace: Path) -> None:
    """The stock task would serve the untrained network once model.pt is gone."""
    parked = workspace / "parked_model.pt"
    model = bundle / "models" / "model.pt"
    os.replace(model, parked)
    try:
        res = _infer(server, QUERY)
        assert res.status_code == 409, res.text
        assert "train it first" in res.json()["detail"]
    finally:
        os.replace(parked, model)
    assert _infer(server, QUERY).status_code == 200


def test_active_learning_strategies(server: str) -> None:
    unlabelled = {TO_LABEL, QUERY}
    first = requests.post(f"{server}/activelearning/first", json={}, timeout=REQUEST_TIMEOUT)
    assert first.status_code == 200, first.text
    assert first.json()["id"] == min(unlabelled)
    rnd = requests.post(f"{server}/activelearning/random", json={}, timeout=REQUEST_TIMEOUT).json()
    assert rnd["id"] in unlabelled
    unc = requests.post(f"{server}/activelearning/uncertainty", json={}, timeout=REQUEST_TIMEOUT)
    assert unc.status_code == 200, unc.text
    assert unc.json()["id"] in unlabelled and set(unc.json()["scores"]) == unlabelled


def test_saved_label_lands_in_final_and_training_uses_it(
    server: str, workspace: Path, bundle: Path, studies: Path
) -> None:
    label_png = workspace / f"{TO_LABEL}.png"
    binary_png(KVASIR / "masks" / f"{TO_LABEL}.jpg", label_png)
    with open(label_png, "rb") as fp:
        res = requests.put(
            f"{server}/datastore/label",
            params={"image": TO_LABEL, "tag": "final"},
            files={"label": (label_png.name, fp, "image/png")},
            data={"params": "{}"},
            timeout=REQUEST_TIMEOUT,
        )
    assert res.status_code == 200, res.text
    saved = studies / "labels" / "final" / f"{TO_LABEL}.png"
    assert saved.is_file()
    np.testing.assert_array_equal(np.asarray(Image.open(saved)), np.asarray(Image.open(label_png)))

    model_path = bundle / "models" / "model.pt"
    before = model_path.read_bytes()
    before_mtime = model_path.stat().st_mtime_ns
    old_mask = _png_array(_infer(server, QUERY).content)
    assert _weights_used(server) == hashlib.sha256(before).hexdigest()
    res = requests.post(
        f"{server}/train/{MODEL}",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False},
        timeout=300,
    )
    assert res.status_code == 200, res.text
    summary = res.json()
    assert sorted(summary["train_images"]) == sorted([*LABELLED, TO_LABEL])
    # the trained weights replace model.pt only when they score at least as well on the validation images (here
    # the training images: val_split 0); otherwise they are kept beside it as model.candidate.pt
    replaced = model_path.read_bytes() != before
    trained = model_path if replaced else model_path.with_name("model.candidate.pt")
    assert replaced or model_path.stat().st_mtime_ns == before_mtime
    after = _state_dict(torch.load(trained, map_location="cpu", weights_only=True))
    initial = _state_dict(torch.load(io.BytesIO(before), map_location="cpu", weights_only=True))
    assert after.keys() == initial.keys()
    assert any(not torch.equal(after[k], v) for k, v in initial.items())

    assert _weights_used(server) == hashlib.sha256(model_path.read_bytes()).hexdigest()
    res = _infer(server, QUERY)
    assert res.status_code == 200, res.text
    new_mask = _png_array(res.content)
    expected = _bundle_run_mask(workspace, bundle, QUERY, "trained")
    np.testing.assert_array_equal(new_mask, expected)
    logger.info("pixels changed by one epoch: %d of %d", int((new_mask != old_mask).sum()), new_mask.size)
