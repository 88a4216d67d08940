"""MLflow through ``--tracking configs/mlflow_tracking.json`` (and MONAI's built-in ``--tracking mlflow``): train and
evaluate runs read back from the store.

Runs ``python -m monai.bundle run`` from the root of a copy of the bundle (the model-zoo way) on the Kvasir sample
with a tiny network (CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "kvasir_sample"
TINY = ["--depths", "[1,1,1,1]", "--dims", "16", "--d_state", "8", "--mid_channels", "8", "--image_size", "[32,32]"]
NETWORK_PARAMS = ("network", "depths", "dims", "d_state", "mid_channels", "keep_unused_stage", "drop_path_rate")


def _run(bundle: Path, configs: list[str], *args: str, tracking: str = "configs/mlflow_tracking.json"
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([f"configs/{c}.json" for c in configs]),
           "--tracking", tracking, *args]
    return subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Train (2 epochs) then evaluate one job in <tmp>/out; returns (bundle copy, output dir, common args)."""
    root = tmp_path_factory.mktemp("mlflow")
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundle", bundle, ignore=shutil.ignore_patterns("models"))
    out = root / "out"
    common = ["--dataset_dir", str(SAMPLE), "--output_dir", str(out), "--num_workers", "0", "--test_fraction", "0.25",
              *TINY]
    for configs, extra in ((["train"], ["--epochs", "2", "--batch_size", "2", "--progress_bar", "False"]),
                           (["train", "evaluate"], [])):
        proc = _run(bundle, configs, *common, *extra)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return bundle, out, common


def _runs(out: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("vmunetv2")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_train_and_evaluate_runs_are_complete_and_linked(job) -> None:
    _, out, _ = job
    client, runs = _runs(out)
    assert [r.data.tags["vmunetv2.workflow"] for r in runs] == ["train", "evaluate"]
    train, evaluate = runs
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert train.data.tags["vmunetv2.job"] == evaluate.data.tags["vmunetv2.job"] == str(out)
    assert evaluate.data.tags["vmunetv2.train_run_id"] == train.info.run_id
    for run in runs:
        params = run.data.params
        for key in (*NETWORK_PARAMS, "image_size", "seed", "version_monai", "version_torch", "version_vmunetv2-monai"):
            assert key in params, (run.data.tags["vmunetv2.workflow"], key)
        assert params["depths"] == "[1, 1, 1, 1]" and params["network"] == "vmunetv2_monai.VMUNetV2"
    tp = train.data.params
    assert tp["optimizer"] == "torch.optim.AdamW" and tp["lr_scheduler"].endswith("WarmupCosineLR")
    assert (tp["learning_rate"], tp["batch_size"], tp["epochs"]) == ("0.001", "2", "2")
    assert int(tp["n_training"]) + int(tp["n_validation"]) + int(evaluate.data.params["n_test"]) == 8
    assert "train_loss" in train.data.metrics and "val_mean_dice" in train.data.metrics
    assert "val_mean_dice" in evaluate.data.metrics
    train_files = {a.path for a in client.list_artifacts(train.info.run_id)}
    eval_files = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert "model.pt" in train_files and any(f.startswith("config_") for f in train_files), train_files
    assert {"per_case.csv", "summary.json"} <= eval_files and any(f.startswith("config_") for f in eval_files)
    config_name = next(f for f in train_files if f.startswith("config_"))
    local = client.download_artifacts(train.info.run_id, config_name, str(out / "download"))
    assert '"network_def"' in Path(local).read_text()  # the executed, merged config


def test_failed_run_is_marked_failed(job, tmp_path: Path) -> None:
    """An evaluation whose checkpoint is missing ends its run FAILED, and the command fails."""
    bundle, out, common = job
    proc = _run(bundle, ["train", "evaluate"], *common, "--ckpt_path", str(tmp_path / "missing.pt"))
    assert proc.returncode != 0
    _, runs = _runs(out)
    assert runs[-1].data.tags["vmunetv2.workflow"] == "evaluate" and runs[-1].info.status == "FAILED"
    assert "missing.pt" in runs[-1].data.tags["vmunetv2.error"]


def test_plain_mlflow_setting_ends_the_evaluate_run_finished(job, tmp_path: Path) -> None:
    """MONAI's built-in ``--tracking mlflow`` leaves the validator's run open (its handler does not close on
    completion); evaluate.json's finalize closes it, so the run ends FINISHED. The plain setting records the metrics
    only: no params, no model or evaluation files, no link to the training run (configs/mlflow_tracking.json does)."""
    bundle, out, common = job
    plain = tmp_path / "plain"
    args = [str(plain) if a == str(out) else a for a in common]
    ckpt = str(out / "models" / "model.pt")
    proc = _run(bundle, ["train", "evaluate"], *args, "--ckpt_path", ckpt, tracking="mlflow")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{plain / 'mlruns.db'}")
    exp = client.get_experiment_by_name("monai_experiment")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert "val_mean_dice" in runs[0].data.metrics
    assert "depths" not in runs[0].data.params and "vmunetv2.train_run_id" not in runs[0].data.tags
