"""MLflow runs under faults (issue 26, group H): a SIGTERM ends the owned run KILLED (exit status 143), and a job
folder whose path holds an apostrophe is tracked for training and for the evaluation that reads its model (MLflow
search filters were built from the path with an f-string)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests import _mlflow_store as mlflow_store
from vmunetv2_monai.handlers import MLflowTracker
from vmunetv2_monai.handlers.lineage import write_lineage

pytestmark = pytest.mark.slow  # MLflow SQLite stores (about 10 s of migrations each) and a subprocess


def _tracker(uri: str, job: str, workflow: str = "train", **kwargs) -> MLflowTracker:
    return MLflowTracker(workflow, job, tracking_uri=uri, experiment_name="t", iteration_log=False, **kwargs)


def test_sigterm_ends_the_run_killed(tmp_path: Path) -> None:
    """SIGTERM during training: the run ends KILLED and the process exits with 143; the default SIGTERM action
    is back once the run has ended."""
    script = textwrap.dedent(f"""
        import os, signal
        from ignite.engine import Engine
        from vmunetv2_monai.handlers import MLflowTracker

        def step(engine, batch):
            if engine.state.iteration == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        engine = Engine(step)
        MLflowTracker("train", {str(tmp_path)!r}, tracking_uri={mlflow_store.store(tmp_path)!r}, experiment_name="t",
                      iteration_log=False).attach(engine)
        try:
            engine.run(range(10), max_epochs=1)
        finally:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
            print("iterations", engine.state.iteration)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "iterations 3" in proc.stdout
    (run,) = mlflow_store.runs(mlflow_store.store(tmp_path))
    assert run.info.status == "KILLED"
    assert run.data.tags["vmunetv2.error"] == "terminated (SIGTERM)"


def test_run_names_are_distinct_and_readable(tmp_path: Path, monkeypatch) -> None:
    """Two runs of one job started in the same second get distinct names; the job's folder name may hold an
    apostrophe (no search filter is built from it)."""
    monkeypatch.setattr("vmunetv2_monai.handlers.tracking._timestamp", lambda: "20260101-000000")
    job = tmp_path / "it's a job"
    for _ in range(2):
        engine = mlflow_store.engine(lambda e, b: None)
        _tracker(mlflow_store.store(tmp_path), str(job)).attach(engine)
        engine.run(range(2), max_epochs=1)
    names = [run.info.run_name for run in mlflow_store.runs(mlflow_store.store(tmp_path))]
    assert names == ["it's a job-train-20260101-000000", "it's a job-train-20260101-000000-2"]


def test_an_evaluation_of_a_model_in_a_folder_with_an_apostrophe_is_linked_to_its_training(tmp_path: Path) -> None:
    """Train, then evaluate that job's model.pt (its lineage sidecar names the training run), in a folder named
    with an apostrophe: both runs end FINISHED in one store, the evaluation a child of the training run."""
    job = tmp_path / "b's job"
    uri = mlflow_store.store(tmp_path)
    engine = mlflow_store.engine(lambda e, b: None)
    _tracker(uri, str(job)).attach(engine)
    engine.run(range(2), max_epochs=1)
    (train,) = mlflow_store.runs(uri)
    model = job / "models" / "model.pt"
    model.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, model)
    write_lineage(model, {"mlflow_run_id": train.info.run_id, "mlflow_tracking_uri": uri, "config_hash": None})
    engine = mlflow_store.engine(lambda e, b: None)
    _tracker(uri, str(job), "evaluate", checkpoint=model).attach(engine)
    engine.run(range(2), max_epochs=1)
    runs = mlflow_store.runs(uri)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    evaluate = runs[1]
    assert evaluate.data.tags["vmunetv2.job"] == str(job) and evaluate.data.tags["vmunetv2.checkpoint"] == str(model)
    assert evaluate.data.tags["vmunetv2.train_run_id"] == evaluate.data.tags["mlflow.parentRunId"] == train.info.run_id
    assert evaluate.info.run_name.startswith("b's job-evaluate-")
