"""MLflow through ``--tracking configs/mlflow_tracking.json`` (and MONAI's built-in ``--tracking mlflow``): train,
evaluate and inference runs and the checkpoints' lineage read back from the store.

Runs ``python -m monai.bundle run`` from the root of a copy of the bundle (the model-zoo way) on the Kvasir sample
with a tiny network (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from monai.utils import path_to_sqlite_uri

pytestmark = pytest.mark.slow  # runs python -m monai.bundle with MLflow stores in subprocesses

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


def _store(out: Path) -> str:
    """The tracking URI of ``out``'s default store, as configs/mlflow_tracking.json makes it."""
    return path_to_sqlite_uri(str(out / "mlruns.db"))


def _runs(out: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=_store(out))
    exp = client.get_experiment_by_name("vmunetv2")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_train_and_evaluate_runs_are_complete_and_linked(job) -> None:
    _, out, _ = job
    client, runs = _runs(out)
    runs = runs[:2]  # the fixture's (later tests add runs)
    assert [r.data.tags["vmunetv2.workflow"] for r in runs] == ["train", "evaluate"]
    train, evaluate = runs
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert train.data.tags["vmunetv2.job"] == evaluate.data.tags["vmunetv2.job"] == str(out)
    assert train.info.run_name.startswith("out-train-20") and evaluate.info.run_name.startswith("out-evaluate-20")
    # evaluate read the model this training wrote: linked by its lineage, as MLflow's own parent/child
    assert evaluate.data.tags["vmunetv2.train_run_id"] == train.info.run_id
    assert evaluate.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert evaluate.data.tags["vmunetv2.checkpoint"] == str(out / "models" / "model.pt")
    assert evaluate.data.tags["vmunetv2.train_config_hash"] == train.data.tags["vmunetv2.config_hash"]
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


def test_sigterm_ends_the_training_run_killed(job, tmp_path: Path) -> None:
    """SIGTERM to a tracked training (the way a scheduler stops a job): the run ends KILLED, not RUNNING."""
    bundle, out, common = job
    args = [str(tmp_path / "killed") if a == str(out) else a for a in common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json']", "--tracking",
           "configs/mlflow_tracking.json", *args, "--epochs", "500", "--batch_size", "2", "--progress_bar", "False"]
    proc = subprocess.Popen(cmd, cwd=bundle, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:  # until an epoch is done: the run is open and training under way
            seen.append(line)
            if "Epoch[1] Complete" in line:
                break
        assert proc.poll() is None, "".join(seen)[-4000:]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, ("".join(seen) + output)[-4000:]
    _, runs = _runs(tmp_path / "killed")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert runs[0].data.tags["vmunetv2.error"] == "terminated (SIGTERM)"


@pytest.fixture(scope="module")
def other_job(job) -> dict[str, Path]:
    """Job B: train in a folder whose name has an apostrophe, with a relative dataset_dir; then, from B's folder,
    evaluate job A's model (the ``job`` fixture's), evaluate a copy of it without its lineage sidecar, and infer
    with A's model into A's store (``--tracking_uri``)."""
    bundle, a_out, common = job
    b_out = a_out.parent / "b's job"
    foreign = a_out.parent / "foreign" / "model.pt"
    foreign.parent.mkdir()
    shutil.copy(a_out / "models" / "model.pt", foreign)
    args = [str(b_out) if a == str(a_out) else os.path.relpath(SAMPLE, bundle) if a == str(SAMPLE) else a
            for a in common]
    steps = (
        (["train"], ["--epochs", "1", "--batch_size", "2", "--progress_bar", "False"]),
        (["train", "evaluate"], ["--ckpt_path", str(a_out / "models" / "model.pt")]),
        (["train", "evaluate"], ["--ckpt_path", str(foreign)]),
    )
    for configs, extra in steps:
        proc = _run(bundle, configs, *args, *extra)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    proc = _run(bundle, ["inference"], "--dataset_dir", str(SAMPLE), "--output_dir", str(b_out), "--num_workers", "0",
                "--ckpt_path", str(a_out / "models" / "model.pt"), "--tracking_uri", _store(a_out), *TINY)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"a": a_out, "b": b_out, "foreign": foreign}


def test_checkpoints_carry_their_training_run(other_job) -> None:
    """model.pt stays a raw state dict; its sidecar names B's training run and config hash; data paths logged
    resolved."""
    b_out = other_job["b"]
    _, runs = _runs(b_out)
    train = runs[0]
    assert train.data.tags["vmunetv2.workflow"] == "train" and train.info.status == "FINISHED"
    assert train.info.run_name.startswith("b's job-train-20")
    assert train.data.params["dataset_dir"] == str(SAMPLE)  # given relative on the command line
    for name in ("model.pt", "latest.pt"):
        record = json.loads((b_out / "models" / f"{name}.json").read_text())
        assert record["mlflow_run_id"] == train.info.run_id and record["mlflow_tracking_uri"] == _store(b_out)
        assert record["config_hash"] == train.data.tags["vmunetv2.config_hash"]
    state = torch.load(b_out / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_evaluating_another_jobs_model_names_that_job(other_job) -> None:
    """Evaluate A's model from B's folder: the link names A's run (in A's store), not B's train run."""
    _, a_runs = _runs(other_job["a"])
    _, b_runs = _runs(other_job["b"])
    a_train, b_train = a_runs[0], b_runs[0]
    evaluate = b_runs[1]
    assert evaluate.data.tags["vmunetv2.workflow"] == "evaluate" and evaluate.info.status == "FINISHED"
    assert evaluate.data.tags["vmunetv2.job"] == str(other_job["b"])
    assert evaluate.data.tags["vmunetv2.train_run_id"] == a_train.info.run_id != b_train.info.run_id
    assert evaluate.data.tags["vmunetv2.train_tracking_uri"] == _store(other_job["a"])
    assert "mlflow.parentRunId" not in evaluate.data.tags  # A's run is not in B's store
    names = [r.info.run_name for r in b_runs]
    assert len(set(names)) == len(names)


def test_foreign_checkpoint_is_unknown(other_job) -> None:
    _, b_runs = _runs(other_job["b"])
    evaluate = b_runs[2]
    assert evaluate.data.tags["vmunetv2.checkpoint"] == str(other_job["foreign"])
    assert evaluate.data.tags["vmunetv2.train_run_id"] == "unknown"
    assert "mlflow.parentRunId" not in evaluate.data.tags


def test_inference_in_the_training_store_is_its_child(other_job) -> None:
    _, a_runs = _runs(other_job["a"])
    inference = [r for r in a_runs if r.data.tags["vmunetv2.workflow"] == "inference"]
    assert len(inference) == 1 and inference[0].info.status == "FINISHED"
    tags, params = inference[0].data.tags, inference[0].data.params
    assert tags["vmunetv2.train_run_id"] == tags["mlflow.parentRunId"] == a_runs[0].info.run_id
    assert params["ckpt_path"] == str(other_job["a"] / "models" / "model.pt") and params["n_images"] == "8"
    assert params["pred_dir"] == str(other_job["b"] / "predictions")
