"""The interactive (DeepEdit-type) bundle ``bundle_deepedit/``: its generated configs are fresh, it passes the
model-zoo's checks as ``bundle/`` does (tests/bundle/test_model_zoo.py; 5 input channels: RGB and two click
channels), its train.json trains by default in a copy (tiny network, CPU), and ``monai.bundle run`` takes clicks
from a clicks file: a click changes the mask where it is placed; an unknown image or a bad click is named on the
last line while the other images still get masks. Tests that need the shipped weights skip while
``bundle_deepedit/models/model.pt`` is absent."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out
from PIL import Image

from tests.bundle.test_model_zoo import BUNDLE as AUTOMATIC_BUNDLE
from tests.bundle.test_model_zoo import TINY, check_metadata, check_pretty_json
from vmunetv2_monai.interactive import MAX_CLICKS, next_click

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle_deepedit"
CONFIGS = BUNDLE / "configs"
MODEL = BUNDLE / "models" / "model.pt"
TRACKED = ("LICENSE", "configs", "docs", "large_files.yml", "sample_data")  # what git tracks (not models/)
NET_ARGS = {k: v for k, v in TINY.items() if k != "image_size"}
TINY_ARGS = [a for k, v in TINY.items() for a in (f"--{k}", json.dumps(v).replace(" ", ""))]
SAMPLE_IMAGES = sorted((BUNDLE / "sample_data" / "images").glob("*.jpg"))
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} is absent: install the interactive model "
                                 "with `python scripts/make_deepedit_bundle.py --model <checkpoint>`")


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _make_deepedit_bundle() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_deepedit_bundle", REPO / "scripts" / "make_deepedit_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(dest: Path) -> Path:
    """A copy of what git tracks in bundle_deepedit/ (no weights)."""
    dest.mkdir()
    for item in TRACKED:
        (shutil.copytree if (BUNDLE / item).is_dir() else shutil.copy2)(BUNDLE / item, dest / item)
    return dest


def _run(args: list[str], cwd: Path, timeout: int = 900) -> tuple[int, str]:
    """``python -m monai.bundle run ARGS`` from ``cwd``; returns (exit status, stdout + stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _tail(log: str, lines: int = 25) -> str:
    return "\n".join(log.strip().splitlines()[-lines:])


def test_generated_configs_are_fresh(tmp_path: Path) -> None:
    """train.json / inference.json, logging.conf and sample_data are what scripts/make_deepedit_bundle.py writes;
    its --check finds a changed file."""
    make = _make_deepedit_bundle()
    assert make.main(["--check"]) == 0, "bundle_deepedit/ is stale: run python scripts/make_deepedit_bundle.py"
    copy = _copy(tmp_path / "vmunetv2_deepedit")
    assert make.main(["--check", "--target", str(copy)]) == 0
    train = json.loads((copy / "configs" / "train.json").read_text())
    train["click_rounds"] = 2
    (copy / "configs" / "train.json").write_text(json.dumps(train, indent=4) + "\n")
    assert make.main(["--check", "--target", str(copy)]) == 1


def test_configs_extend_the_automatic_bundle() -> None:
    """Every id of bundle/'s train.json and inference.json is in the generated file with the same value, except
    what deepedit_train.json / deepedit_inference.json override (the network's input channels, the transforms and
    the engines' click simulation)."""
    for name, overrides in (("train", "deepedit_train"), ("inference", "deepedit_inference")):
        automatic = json.loads((AUTOMATIC_BUNDLE / "configs" / f"{name}.json").read_text())
        own = json.loads((AUTOMATIC_BUNDLE / "configs" / f"{overrides}.json").read_text())
        changed = {k.split("#")[0] for k in own}
        generated = _config(name)
        differing = sorted(k for k in automatic if automatic[k] != generated.get(k))
        assert set(differing) <= changed, (name, sorted(set(differing) - changed))
    assert ConfigParser.load_config_file(str(CONFIGS / "inference.json"))["network_def"]["in_channels"] == \
        "$@in_channels + 2"


@pytest.mark.parametrize("name, ids", [("train", ("train#preprocessing", "validate#preprocessing")),
                                       ("inference", ("preprocessing",))])
def test_click_guidance_enters_only_through_guidance_transforms(name: str, ids: tuple[str, ...]) -> None:
    """The interactive configs set ``guidance_transforms`` and repeat none of the automatic bundle's transform
    expressions: each pipeline is the automatic one with the click guidance inserted where ``guidance_transforms``
    stands (after loading and resizing, before augmentation)."""
    own = json.loads((AUTOMATIC_BUNDLE / "configs" / f"deepedit_{name}.json").read_text())
    assert own["guidance_transforms"] == ["@click_guidance"]
    assert not [k for k in own if "preprocessing" in k], "deepedit configs must not repeat transform expressions"
    parsers = {}
    for root, config in ((AUTOMATIC_BUNDLE, AUTOMATIC_BUNDLE / "configs" / f"{name}.json"),
                         (BUNDLE, CONFIGS / f"{name}.json")):
        parsers[root] = ConfigParser()
        parsers[root].read_config(str(config))
        parsers[root]["bundle_root"] = str(root)
    for i in ids:
        automatic = [type(t).__name__ for t in parsers[AUTOMATIC_BUNDLE].get_parsed_content(i).transforms]
        interactive = [type(t).__name__ for t in parsers[BUNDLE].get_parsed_content(i).transforms]
        assert interactive.count("AddClickGuidanced") == 1, (i, interactive)
        at = interactive.index("AddClickGuidanced")
        assert interactive[:at] + interactive[at + 1:] == automatic, (i, interactive, automatic)
        before = parsers[AUTOMATIC_BUNDLE].get_parsed_content("load_transforms")
        if i == "train#preprocessing":
            before = before + parsers[AUTOMATIC_BUNDLE].get_parsed_content("spatial_transforms")[
                parsers[AUTOMATIC_BUNDLE]["spatial_mode"]]
        assert at == len(before), (i, at, interactive)


def test_required_files_and_large_files_list() -> None:
    """ci/verify_bundle.py: necessary files, and models/model.pt listed in large_files.yml with a sha256 that the
    file, when present, matches."""
    for rel in ("configs/metadata.json", "LICENSE", "configs/inference.json", "configs/train.json", "docs/README.md",
                "configs/logging.conf"):
        assert (BUNDLE / rel).is_file(), rel
    entries = {e["path"]: e for e in yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]}
    assert entries["models/model.pt"]["hash_type"] == "sha256"
    if MODEL.is_file():
        assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == entries["models/model.pt"]["hash_val"], \
            "models/model.pt does not match large_files.yml: install it with scripts/make_deepedit_bundle.py --model"


def test_verify_metadata_against_schema(tmp_path: Path) -> None:
    meta = check_metadata(CONFIGS, tmp_path)
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 5 == len(image["channel_def"])
    assert [image["channel_def"][str(i)] for i in (3, 4)] == ["foreground clicks", "background clicks"]
    # the pins are the automatic bundle's: both run in the same environments
    automatic = json.loads((AUTOMATIC_BUNDLE / "configs" / "metadata.json").read_text())
    for key in ("monai_version", "pytorch_version", "numpy_version", "required_packages_version"):
        assert meta[key] == automatic[key], key


def test_json_is_pretty_formatted() -> None:
    check_pretty_json(BUNDLE)


@pytest.mark.parametrize("workflow_type, name", [("infer", "inference"), ("train", "train")])
def test_check_properties(workflow_type: str, name: str, tmp_path: Path) -> None:
    """As the model-zoo's check_workflow (see test_model_zoo.test_check_properties)."""
    wf = ConfigWorkflow(config_file=str(CONFIGS / f"{name}.json"), workflow_type=workflow_type,
                        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                        bundle_root=str(BUNDLE), dataset_dir=str(BUNDLE / "sample_data"), batch_size=2,
                        num_workers=0, **NET_ARGS, **({"output_dir": str(tmp_path / "out")} if name == "train" else {}))
    wf.initialize()
    assert wf.check_properties() == []


def test_verify_net_in_out_with_five_channels() -> None:
    """verify_net_in_out builds its input from metadata.json: 5 channels (RGB and the two click channels)."""
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), n=2, device="cpu",
                      **NET_ARGS)


def _tiny_state(bundle: Path, path: Path) -> Path:
    """Untrained weights of ``bundle``'s inference network with the tiny settings."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(TINY)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.mark.slow  # TorchScript export of the bundle's network
def test_ckpt_export_with_inference_config_alone(tmp_path: Path) -> None:
    """The model-zoo's TorchScript check (scripting) of the 5-channel network; the export matches eager."""
    bundle = _copy(tmp_path / "bundle")
    (bundle / "models").mkdir()
    _tiny_state(bundle, bundle / "models" / "model.pt")
    ts = bundle / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(bundle / "configs" / "inference.json"),
                bundle_root=str(bundle), input_shape=[1, 5, 64, 64], **NET_ARGS)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(TINY)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = torch.rand(1, 5, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net(x))


@pytest.mark.slow  # trains through monai.bundle in a subprocess
def test_default_training_runs_in_a_copy_of_the_bundle(tmp_path: Path) -> None:
    """model-zoo style: a copy of bundle_deepedit/ run from its root with train.json's defaults (the bundled
    sample data) and the explicit --overwrite_shipped_model True (test_bundle's default-run test explains), one
    epoch of a tiny network: it trains with simulated clicks, validates with the annotator's
    clicks and saves models/model.pt, a 5-channel network."""
    copy = _copy(tmp_path / "vmunetv2_deepedit")
    code, log = _run(["--config_file", "configs/train.json", "--epochs", "1", "--progress_bar", "False",
                      "--overwrite_shipped_model", "True", "--num_workers", "0", "--batch_size", "4", *TINY_ARGS],
                     cwd=copy)
    assert code == 0, _tail(log)
    assert "simulated clicks (training)" in log and "simulated clicks (validation): " in log, _tail(log)
    state = torch.load(copy / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    first = next(v for v in state.values() if v.ndim == 4)
    assert first.shape[1] == 5, first.shape


def _write_clicks(path: Path, clicks: dict) -> Path:
    path.write_text(json.dumps(clicks, indent=4))
    return path


def _mask(pred_dir: Path, stem: str) -> np.ndarray:
    """A written mask in MONAI's array order (W, H), as clicks are given."""
    mask = np.asarray(Image.open(pred_dir / f"{stem}_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    return (mask > 0).T


def _infer(bundle: Path, data: Path, out: Path, clicks: dict | None = None, extra: tuple[str, ...] = ()) -> str:
    """``monai.bundle run --config_file configs/inference.json`` from ``bundle``'s root on the images of ``data``,
    with ``clicks`` as a clicks file; returns the log (the run must succeed)."""
    args = ["--config_file", "configs/inference.json", "--dataset_dir", str(data), "--pred_dir", str(out),
            "--overlay", "False", "--num_workers", "0", *extra]
    if clicks is not None:
        args += ["--clicks_file", str(_write_clicks(out.parent / f"{out.name}_clicks.json", clicks))]
    code, log = _run(args, cwd=bundle)
    assert code == 0, _tail(log)
    return log


@needs_model
@pytest.mark.slow  # runs monai.bundle inference in subprocesses
def test_a_click_changes_the_mask_where_it_is_placed(tmp_path: Path) -> None:
    """The shipped model on the sample images without clicks; then, on the image with the largest error region,
    the click benchmark's annotator click (:func:`next_click`) given in a clicks file: the mask flips at the click
    (a foreground click is covered, a background click is not) and differs from the no-click mask."""
    _infer(BUNDLE, BUNDLE / "sample_data" / "images", tmp_path / "plain")
    best = None
    for image in SAMPLE_IMAGES:
        truth = (np.asarray(Image.open(BUNDLE / "sample_data" / "masks" / f"{image.stem}.png").convert("L")) > 127).T
        plain = _mask(tmp_path / "plain", image.stem)
        click = next_click(plain, truth)
        if click is None:
            continue
        error = (truth & ~plain) if click[0] == "foreground" else (plain & ~truth)
        size = int(error.sum())
        if best is None or size > best[0]:
            best = (size, image, click, plain)
    assert best is not None, "the shipped model is perfect on every sample image: no click to test"
    _, image, (kind, point), plain = best
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(image, data / image.name)
    _infer(BUNDLE, data, tmp_path / "clicked", {image.name: {kind: [point]}})
    clicked = _mask(tmp_path / "clicked", image.stem)
    assert bool(plain[tuple(point)]) == (kind == "background")
    assert bool(clicked[tuple(point)]) == (kind == "foreground"), f"{image.name}: {kind} click {point} changed nothing"
    assert not np.array_equal(clicked, plain)


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A copy of bundle_deepedit/ with untrained tiny weights (the errors do not depend on the weights)."""
    copy = _copy(tmp_path / "vmunetv2_deepedit")
    (copy / "models").mkdir()
    _tiny_state(copy, copy / "models" / "model.pt")
    return copy


@pytest.mark.parametrize("clicks, named", [
    pytest.param({"missing.jpg": {"foreground": [[1, 1]]}}, "missing.jpg: named in extra_keys", id="unknown-image"),
    pytest.param({"b.jpg": {"foreground": [[10_000, 1]]}}, "foreground click [10000, 1] lies outside the image",
                 id="outside"),
    pytest.param({"b.jpg": {"background": [[1.5, 1]]}}, "background click [1.5, 1] has a coordinate that is not",
                 id="float"),
    pytest.param({"b.jpg": {"foreground": [[-3, 1]]}}, "foreground click [-3, 1] lies outside", id="negative"),
    pytest.param({"b.jpg": {"background": [[1, 1]] * (MAX_CLICKS + 1)}}, f"{MAX_CLICKS + 1} background clicks",
                 id="too-many"),
])
@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_bad_clicks_file_entry_is_named_last_and_the_others_get_masks(tiny_bundle: Path, tmp_path: Path,
                                                                      clicks: dict, named: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for stem, source in zip(("a", "b"), SAMPLE_IMAGES[:2], strict=True):
        shutil.copy(source, data / f"{stem}.jpg")
    clicks = {"a.jpg": {"foreground": [[5, 5]]}, **clicks}
    path = _write_clicks(tmp_path / "clicks.json", clicks)
    out = tmp_path / "out"
    code, log = _run(["--config_file", "configs/inference.json", "--dataset_dir", str(data), "--pred_dir", str(out),
                      "--overlay", "False", "--num_workers", "0", "--clicks_file", str(path), *TINY_ARGS],
                     cwd=tiny_bundle)
    last = log.strip().splitlines()[-1]
    assert code != 0 and named in last, _tail(log)
    assert "missing.jpg" in named or str(data / "b.jpg") in last, last
    assert (out / "a_mask.png").is_file(), _tail(log)
    assert (out / "b_mask.png").is_file() == ("missing.jpg" in clicks), _tail(log)


@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_a_clicks_file_with_another_key_is_refused_by_name(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE_IMAGES[0], data / "a.jpg")
    path = _write_clicks(tmp_path / "clicks.json", {"a.jpg": {"tumour": [[1, 1]]}})
    code, log = _run(["--config_file", "configs/inference.json", "--dataset_dir", str(data), "--pred_dir",
                      str(tmp_path / "out"), "--num_workers", "0", "--clicks_file", str(path), *TINY_ARGS],
                     cwd=tiny_bundle)
    last = log.strip().splitlines()[-1]
    assert code != 0 and str(path) in last and "tumour" in last, _tail(log)
