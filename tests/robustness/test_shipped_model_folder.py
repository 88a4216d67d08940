"""Training never writes into the bundle's shipped ``models/`` unless asked to (issue 26, group E / point 5).

The default ``output_dir`` of train.json is the bundle root, so a model-zoo default run (``python -m monai.bundle
run --config_file configs/train.json`` from the bundle) would train into the folder of ``models/model.pt``, the
file that ``large_files.yml`` lists and every default inference, DICOM, MONAI Label and Deploy run uses. It is
refused by the first step of ``run``, before any training, naming the folder and the two ways on (``initialize``
still passes, so ``monai.bundle.load(workflow_type="train")`` gets the network); the explicit
``--overwrite_shipped_model True`` and MONAI Label's stock ``/train`` (a network ``CheckpointLoader`` of the model in
``train#handlers``; this package's MONAI Label app trains with the same stock task) still train into it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from vmunetv2_monai import check_training_folder

from .conftest import BUNDLE, CONFIGS, SAMPLE, TINY, error_chain, run_bundle, tail

CHECK = "$vmunetv2_monai.check_training_folder(@ckpt_dir, @overwrite_shipped_model)"


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    """What git tracks of bundle/ that a training run reads: configs, large_files.yml, models/, sample_data/."""
    copy = tmp_path / "vmunetv2"
    copy.mkdir()
    for item in ("configs", "models", "sample_data"):
        shutil.copytree(BUNDLE / item, copy / item)
    shutil.copy2(BUNDLE / "large_files.yml", copy / "large_files.yml")
    return copy


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (hidden files, e.g. a lock, included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # runs monai.bundle in a subprocess
def test_default_training_in_the_bundle_is_refused_and_writes_nothing(bundle_copy):
    before = _snapshot(bundle_copy)
    code, log = run_bundle(["--config_file", "configs/train.json", "--epochs", "1"], cwd=bundle_copy)
    last = tail(log, 1)
    assert code == 1, tail(log, 40)
    assert last.startswith("vmunetv2_monai error: ShippedModelError: training would write into the bundle's "
                           f"shipped model folder {bundle_copy / 'models'} (model.pt listed in "
                           f"{bundle_copy / 'large_files.yml'})"), last
    assert "--output_dir runs/<name>" in last and "--overwrite_shipped_model True" in last, last
    after = _snapshot(bundle_copy)
    # no model, latest.pt, candidate or lock; only the event files of the TensorBoard writer MONAI's handler opens
    # when initialize builds the trainer
    assert {k: v for k, v in after.items() if not k.startswith("tensorboard/")} == before, sorted(after)


def test_refused_in_process_before_training_and_multi_gpu_checks_the_same(bundle_copy):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(bundle_copy / "configs" / "train.json"), workflow_type="train",
                        meta_file=str(bundle_copy / "configs" / "metadata.json"), logging_file=False,
                        bundle_root=str(bundle_copy), num_workers=0, batch_size=2, **TINY)
    wf.initialize()  # what monai.bundle.load(workflow_type="train") does: allowed
    model = (bundle_copy / "models" / "model.pt").read_bytes()
    chain = error_chain(wf.run)
    assert f"ShippedModelError: training would write into the bundle's shipped model folder {bundle_copy / 'models'}" \
        in chain, chain
    assert sorted(p.name for p in (bundle_copy / "models").iterdir()) == ["model.pt"]
    assert (bundle_copy / "models" / "model.pt").read_bytes() == model
    for name in ("train", "multi_gpu_train"):  # the first step of run, before the trainer runs
        assert json.loads((CONFIGS / f"{name}.json").read_text())["run"] == [CHECK, "$@train#trainer.run()"], name


def test_own_folders_pass_and_the_explicit_opt_in_warns(bundle_copy, tmp_path, caplog):
    for folder in (bundle_copy / "runs" / "x" / "models", tmp_path / "elsewhere" / "models", bundle_copy):
        assert check_training_folder(folder, False), folder
    with caplog.at_level(logging.WARNING, logger="vmunetv2_monai.bundle.weights"):
        assert check_training_folder(bundle_copy / "models", True)
    assert f"training into the bundle's shipped model folder {bundle_copy / 'models'}" in caplog.text
    with pytest.raises(TypeError, match="bad value 'true' for 'overwrite_shipped_model': expected True or False"):
        check_training_folder(bundle_copy / "models", "true")


def _stock_workflow(bundle: Path, load_path: Path, tmp_path: Path):
    """train.json with what MONAI Label 0.8.5's stock BundleTrainTask overrides for /train (bundle_root, the data,
    the epochs, the device and a network CheckpointLoader of models/<model_filename> in front of train#handlers)."""
    from monai.bundle import ConfigWorkflow

    handlers = json.loads((bundle / "configs" / "train.json").read_text())["train"]["handlers"]
    loader = {"_target_": "CheckpointLoader", "load_path": str(load_path), "load_dict": {"model": "$@network"},
              "strict": True}
    pairs = [{"image": str(p), "label": str(SAMPLE / "masks" / p.name)} for p in sorted((SAMPLE / "images").iterdir())]
    return ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                          meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False,
                          bundle_root=str(bundle),
                          epochs=1,
                          device="$torch.device('cpu')", num_workers=0, progress_bar=False, batch_size=2,
                          **{"train#handlers": [loader, *handlers], "train#dataset#data": pairs[:6],
                             "validate#dataset#data": pairs[6:]})


def _first_run_step(wf) -> None:
    """initialize, then the check that ``run`` evaluates first (the trainer itself is not run)."""
    wf.initialize()
    wf.parser.get_parsed_content("run#0")


def test_monai_label_stock_train_fine_tunes_its_model_in_place(bundle_copy, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vmunetv2_monai.bundle.weights"):
        _first_run_step(_stock_workflow(bundle_copy, bundle_copy / "models" / "model.pt", tmp_path))
    assert f"fine-tuning {bundle_copy / 'models' / 'model.pt'} in place" in caplog.text
    # a loader of a file outside the shipped folder is no fine-tuning in place: refused
    other = tmp_path / "other.pt"
    shutil.copy2(bundle_copy / "models" / "model.pt", other)
    chain = error_chain(lambda: _first_run_step(_stock_workflow(bundle_copy, other, tmp_path)))
    assert f"shipped model folder {bundle_copy / 'models'}" in chain, chain
