"""The bundle's configs under bad values and faults: each refused with the config id or file named, and nothing a
user had is lost (an earlier model, inputs, the good images of a folder with bad ones)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vmunetv2_monai.bundle.checks import check_cli
from vmunetv2_monai.data import DataListError, InputImages

from .conftest import (
    BUNDLE,
    SAMPLE,
    TINY_ARGS,
    cfg,
    disc_pair,
    error_chain,
    load_transforms,
    run_bundle,
    tail,
    workflow,
)

BUNDLE_MAIN = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", 0, "for 'epochs'"), ("epochs", -1, "for 'epochs'"), ("epochs", 2.5, "for 'epochs'"),
    ("learning_rate", "0.1", "for 'learning_rate'"), ("learning_rate", 0.0, "for 'learning_rate'"),
    ("weight_decay", -1.0, "for 'weight_decay'"), ("val_interval", 0, "for 'val_interval'"),
    ("threshold", 1.5, "for 'threshold'"), ("batch_size", 0, "for 'batch_size'"),
])
def test_bad_training_values_name_the_config_id(dataset, tmp_path, key, value, expected):
    wf = workflow(("train",), dataset_dir=str(dataset), output_dir=str(tmp_path / "out"),
                  **{"batch_size": 2, key: value})
    assert expected in error_chain(wf.initialize)
    assert not (tmp_path / "out" / "models").exists()


def test_batch_size_refused_only_when_nothing_would_train():
    from vmunetv2_monai.bundle.checks import check_batch_size

    assert check_batch_size(8, 5) and check_batch_size(4, 5) and check_batch_size(1, 1)  # a partial batch trains
    with pytest.raises(ValueError, match="'batch_size' 8 with 1 training image"):
        check_batch_size(8, 1)


@pytest.mark.parametrize("content, expected", [
    ("[]", "holds a JSON list"), ('{"training": {"a": 1}}', "'training' must be a list of objects"),
    ('{"training": [1, 2]}', "'training' must be a list of objects"), ("{not json", "is not valid JSON"),
    ('{"training": [{"image": "/nope.png", "label": "/nope.png"}]}', "image file not found"),
])
def test_bad_data_list_files_are_named(tmp_path, content, expected):
    path = tmp_path / "list.json"
    path.write_text(content)
    wf = workflow(("train",), datalist_file=str(path), output_dir=str(tmp_path / "out"))
    chain = error_chain(wf.initialize)
    assert expected in chain and "list.json" in chain


def _argv(*args: str) -> list[str]:
    return [BUNDLE_MAIN, "run", "--config_file", str(cfg("train")), "--bundle_root", str(BUNDLE), *args]


@pytest.mark.parametrize("args, bad", [
    (["--epoch", "1"], "--epoch (did you mean 'epochs'?)"), (["--learningrate=0.1"], "--learningrate"),
    (["--batch-sise", "2"], "--batch_sise"), (["--nosuch#child", "1"], "--nosuch#child"),
])
def test_unknown_config_ids_on_the_command_line_are_refused(args, bad, monkeypatch):
    monkeypatch.setattr("sys.excepthook", __import__("sys").__excepthook__)
    with pytest.raises(ValueError, match="unknown config id") as err:
        check_cli(_argv(*args))
    assert bad in str(err.value)


@pytest.mark.parametrize("args", [
    ["--epochs", "1"], ["--train#dataloader#batch_size", "2"], ["--network_def#new_arg", "1"],
    ["--eval_split", "test"], ["--tracking", "mlflow", "--run_name", "x"], ["--threshold=0.4"],
])
def test_known_config_ids_pass_and_other_programs_are_not_checked(args, monkeypatch):
    monkeypatch.setattr("sys.excepthook", __import__("sys").__excepthook__)
    assert check_cli(_argv(*args))
    assert check_cli(["pytest", "--epoch", "1"])


def test_pred_dir_equal_to_the_input_folder_is_refused(dataset):
    before = sorted(p.name for p in (dataset / "images").iterdir())
    with pytest.raises(DataListError, match="'pred_dir'"):
        InputImages(dataset, load_transforms(("image",)), output_dir=dataset / "images")
    assert sorted(p.name for p in (dataset / "images").iterdir()) == before


def test_folder_of_only_bad_images_fails_at_once_naming_them(tmp_path):
    (tmp_path / "a.png").write_text("x")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of the 2") as err:
        InputImages(tmp_path, load_transforms(("image",)))
    assert "a.png" in str(err.value) and "b.jpg" in str(err.value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the tiny network on 8 synthetic pairs: (work dir, dataset, output dir, common args)."""
    work = tmp_path_factory.mktemp("faults")
    data = work / "data"
    for i in range(8):
        disc_pair(data, f"case{i}")
    out = work / "out"
    common = ["--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out),
              "--num_workers", "0", *TINY_ARGS]
    code, log = run_bundle(["--config_file", str(cfg("train")), *common, "--epochs", "1",
                            "--batch_size", "2", "--progress_bar", "False"], cwd=work)
    assert code == 0, tail(log, 60)
    return work, data, out, common


@pytest.mark.slow  # trains, then runs monai.bundle inference in a subprocess
def test_folder_inference_predicts_every_good_image_and_names_the_bad_ones(trained, tmp_path):
    work, _, out, common = trained
    model = (out / "models" / "model.pt").read_bytes()
    inputs = tmp_path / "inputs"
    shutil.copytree(SAMPLE / "images", inputs)
    good = sorted(p.stem for p in inputs.iterdir())
    first = sorted(inputs.iterdir())[0]
    (inputs / "aaa_truncated.jpg").write_bytes(first.read_bytes()[:3000])  # sorts first: must not stop the rest
    (inputs / "notes.png").write_text("not an image")
    Image.fromarray(np.full((30, 40), 900, dtype=np.uint16)).save(inputs / "grey16.png")
    code, log = run_bundle(["--config_file", str(cfg("inference")), *common, "--dataset_dir", str(inputs),
                            "--pred_dir", str(tmp_path / "pred")], cwd=work)
    assert code != 0
    end = tail(log, 8)
    assert "aaa_truncated.jpg" in end and "notes.png" in end and "2 of 11" in end, end
    written = {p.name for p in (tmp_path / "pred").iterdir()}
    for stem in good + ["grey16"]:
        assert f"{stem}_mask.png" in written and f"{stem}_overlay.png" in written, stem
    assert (out / "models" / "model.pt").read_bytes() == model


@pytest.mark.slow  # trains twice through monai.bundle run in subprocesses
def test_rerun_into_a_folder_with_a_model_keeps_the_old_one(trained):
    work, _, out, common = trained
    model = (out / "models" / "model.pt").read_bytes()
    latest = (out / "models" / "latest.pt").read_bytes()
    code, log = run_bundle(["--config_file", str(cfg("train")), *common, "--epochs", "1",
                            "--batch_size", "2", "--progress_bar", "False"], cwd=work)
    assert code == 0, tail(log, 40)
    kept = {p.name: p.read_bytes() for p in (out / "models").glob("*.prev-*.pt")}
    assert model in kept.values() and latest in kept.values(), sorted(kept)
    assert "kept as" in log
    assert "encoder.patch_embed.proj.weight" in torch.load(out / "models" / "model.pt", weights_only=True)


def test_json_config_files_parse():
    for path in sorted((BUNDLE / "configs").glob("*.json")):
        json.loads(path.read_text())
