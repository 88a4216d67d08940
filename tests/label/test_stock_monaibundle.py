"""MONAI Label 0.8.5's stock ``monaibundle`` sample app serving this bundle unchanged, over REST on 127.0.0.1.

The app is what ``monailabel apps --download --name monaibundle`` copies out of the installed monailabel package
(offline: the wheel ships the sample apps); the repository's ``bundle/`` is copied, file for file, into the app's
``model/<name>`` folder and served with ``--conf models <name>``, as a local (non-zoo) bundle. The shipped weights are
served; ``VMUNETV2_SCAN_BACKEND=torch`` in both environments makes the server and ``monai.bundle run`` compute the
same thing (the compiled CPU scan may be built in one environment and not in the other). The tests run in file
order and share the server: info, inference parity with ``monai.bundle run`` (main environment), then fine-tuning
on the final labels (the served model never gets worse on the held-out label) and inference with what it serves.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ._support import (
    bundle_run_masks,
    local_datastore,
    require_monailabel,
    stock_app,
    stock_server,
)

require_monailabel()

# requests comes with monailabel: imported after the check above
import requests  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.slow  # starts MONAI Label's stock app server and trains

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
SAMPLE = BUNDLE / "sample_data"
MODEL = "vmunetv2"
SERVER_START_TIMEOUT = 180.0
REQUEST_TIMEOUT = 300.0
IMAGES = sorted(p.stem for p in (SAMPLE / "images").glob("*.jpg"))[:6]
LABELLED = IMAGES[:4]  # final labels: training uses 3, validation 1 (val_split 0.25)
QUERY = IMAGES[5]  # never labelled; used for inference


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stock_monaibundle")


@pytest.fixture(scope="module")
def app_dir(workspace: Path) -> Path:
    return stock_app(workspace, BUNDLE, MODEL, "BundleInferTask(b, self.conf)")


@pytest.fixture(scope="module")
def bundle(app_dir: Path) -> Path:
    return app_dir / "model" / MODEL


@pytest.fixture(scope="module")
def studies(workspace: Path) -> Path:
    """A local datastore: six sample images, four with final labels (0/1 PNG, as MONAI Label stores them)."""
    return local_datastore(workspace / "studies", [SAMPLE / "images" / f"{n}.jpg" for n in IMAGES],
                           [SAMPLE / "masks" / f"{n}.png" for n in LABELLED])


@pytest.fixture(scope="module")
def server(workspace: Path, app_dir: Path, studies: Path):
    with stock_server(workspace, app_dir, studies, MODEL, SERVER_START_TIMEOUT) as base:
        yield base


def _infer(server: str, image: str) -> np.ndarray:
    """POST /infer with no parameters (the bundle's displayable_configs make the result a PNG) -> the mask."""
    res = requests.post(f"{server}/infer/{MODEL}", params={"image": image, "output": "image"},
                        data={"params": "{}"}, timeout=REQUEST_TIMEOUT)
    assert res.status_code == 200, res.text
    assert res.content.startswith(b"\x89PNG"), "the mask did not come back as PNG"
    return np.asarray(Image.open(io.BytesIO(res.content)))


def _bundle_run_mask(workspace: Path, bundle: Path, image: str, tag: str) -> np.ndarray:
    """``monai.bundle run`` of the bundle's inference.json on one sample image -> its 0/1 mask (H, W)."""
    return bundle_run_masks(bundle, [SAMPLE / "images" / f"{image}.jpg"], workspace / f"bundle_run_{tag}")[image]


def test_info_lists_the_bundle_with_lesion_1(server: str, bundle: Path) -> None:
    info = requests.get(f"{server}/info/", timeout=30).json()
    model = info["models"][MODEL]
    assert model["labels"] == {"lesion": 1}
    assert model["dimension"] == 2
    assert model["type"] == "segmentation"
    assert model["version"] == json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert model["config"]["result_extension"] == ".png"
    assert MODEL in info["trainers"]
    assert info["labels"] == ["lesion"]
    assert info["datastore"]["label_tags"] == {"final": len(LABELLED)}


def test_infer_matches_monai_bundle_run(server: str, workspace: Path, bundle: Path) -> None:
    rest = _infer(server, QUERY)
    w, h = Image.open(SAMPLE / "images" / f"{QUERY}.jpg").size
    assert rest.shape == (h, w) and rest.dtype == np.uint8
    expected = _bundle_run_mask(workspace, bundle, QUERY, "shipped")
    assert 0 < int(expected.sum()) < expected.size, "all-0 or all-1 mask: the parity check would prove little"
    np.testing.assert_array_equal(rest, expected)
    logger.info("stock app mask == bundle-run mask: %d lesion pixels of %d", int(rest.sum()), rest.size)


def _dice(mask: np.ndarray, image: str) -> float:
    truth = np.asarray(Image.open(SAMPLE / "masks" / f"{image}.png").convert("L")) > 127
    pred = mask > 0
    return 2.0 * float((pred & truth).sum()) / max(1.0, float(pred.sum() + truth.sum()))


def _held_out(workspace: Path) -> list[str]:
    """The validation images of the last /train, from the bundle's log line that scores the incumbent model."""
    lines = [ln for ln in (workspace / "server.log").read_text().splitlines() if "on the validation images [" in ln]
    assert lines, "the training did not score the model it could replace"
    names = lines[-1].split("on the validation images [", 1)[1].split("]", 1)[0].split(", ")
    return [Path(n).stem for n in names]


def _train(server: str) -> None:
    res = requests.post(f"{server}/train/{MODEL}", params={"run_sync": "true"},
                        json={"max_epochs": 2, "val_split": 0.25, "device": "cpu", "multi_gpu": False},
                        timeout=REQUEST_TIMEOUT)
    assert res.status_code == 200, res.text


def test_train_fine_tunes_and_never_serves_a_worse_model(server: str, workspace: Path, bundle: Path) -> None:
    """/train starts from models/model.pt with the fine-tuning rate and holds out a label; the served model then
    scores at least as well on that label as before, and /infer serves what ``monai.bundle run`` computes."""
    model = bundle / "models" / "model.pt"
    before = model.read_bytes()
    masks_before = {n: _infer(server, n) for n in LABELLED}
    _train(server)
    log = (workspace / "server.log").read_text()
    assert "epoch 1: learning rate 0.0001 " in log  # finetune_learning_rate, not the 1e-3 of training from scratch
    held_out = _held_out(workspace)
    assert held_out and set(held_out) <= set(LABELLED)
    for name in held_out:
        assert _dice(_infer(server, name), name) >= _dice(masks_before[name], name)
    replaced = model.read_bytes() != before
    assert replaced == ("models/model.pt replaced" in log), "the log must say whether the model was replaced"
    if not replaced:
        assert (bundle / "models" / "model.candidate.pt").is_file()
    new_mask = _infer(server, QUERY)
    np.testing.assert_array_equal(new_mask, _bundle_run_mask(workspace, bundle, QUERY, "after_train"))
    logger.info("fine-tune: model.pt %s; held-out %s", "replaced" if replaced else "kept", held_out)


def test_train_that_would_make_it_worse_keeps_the_served_model(server: str, workspace: Path, bundle: Path) -> None:
    """A harmful fine-tuning rate (set in the bundle's train.json, which the stock task reads at every /train):
    the new weights score below the served model on the held-out label, so models/model.pt stays byte for byte,
    the new weights are kept as models/model.candidate.pt and the log says why."""
    config = bundle / "configs" / "train.json"
    original = config.read_text()
    model = bundle / "models" / "model.pt"
    before = model.read_bytes()
    query_before = _infer(server, QUERY)
    settings = json.loads(original)
    settings["finetune_learning_rate"] = 0.5
    config.write_text(json.dumps(settings, indent=4))
    try:
        _train(server)
    finally:
        config.write_text(original)
    log = (workspace / "server.log").read_text()
    assert "NOT replaced" in log.split("model already at")[-1], log[-3000:]
    assert model.read_bytes() == before
    candidate = torch.load(bundle / "models" / "model.candidate.pt", map_location="cpu", weights_only=True)
    assert candidate.keys() == torch.load(io.BytesIO(before), map_location="cpu", weights_only=True).keys()
    np.testing.assert_array_equal(_infer(server, QUERY), query_before)
