"""MLflowTracker on an ignite engine and a local sqlite store: run status on success, exception and Ctrl-C; the
lineage sidecar that checkpoint savers write from the tracker's run. (SIGTERM and apostrophes in the job folder,
issue 26 group H: test_mlflow_runs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from tests import _mlflow_store as mlflow_store
from vmunetv2_monai.handlers import AtomicCheckpointSaver, MLflowTracker, read_lineage
from vmunetv2_monai.handlers.checkpoint import keep_previous
from vmunetv2_monai.handlers.lineage import sidecar_path, write_lineage

pytestmark = pytest.mark.slow  # each test creates an MLflow SQLite store (about 10 s of migrations)


def _tracker(uri: str, job: str, **kwargs) -> MLflowTracker:
    return MLflowTracker("train", job, tracking_uri=uri, experiment_name="t", iteration_log=False, **kwargs)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_exception_ends_the_run(tmp_path: Path, error: BaseException, status: str) -> None:
    def step(engine: Engine, batch: int) -> None:
        if engine.state.iteration == 2:
            raise error

    engine = mlflow_store.engine(step)
    _tracker(mlflow_store.store(tmp_path), str(tmp_path)).attach(engine)
    with pytest.raises(type(error)):
        engine.run(range(4), max_epochs=1)
    (run,) = mlflow_store.runs(mlflow_store.store(tmp_path))
    assert run.info.status == status
    assert run.data.tags["vmunetv2.error"].startswith(type(error).__name__)


def test_saver_records_the_trackers_run_beside_the_checkpoint(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    engine = mlflow_store.engine(lambda e, b: None)
    tracker = _tracker(mlflow_store.store(tmp_path), str(tmp_path))
    tracker.attach(engine)
    saver = AtomicCheckpointSaver(tmp_path / "models", {"model": net}, filename="model.pt", save_interval=1)
    saver.attach(engine)
    engine.run(range(2), max_epochs=1)

    (run,) = mlflow_store.runs(mlflow_store.store(tmp_path))
    path = tmp_path / "models" / "model.pt"
    assert set(torch.load(path, weights_only=True)) == {"weight", "bias"}  # still a raw state dict
    record = read_lineage(path)
    assert record is not None and record["mlflow_run_id"] == run.info.run_id
    assert record["mlflow_run_name"] == run.info.run_name
    assert record["mlflow_tracking_uri"] == mlflow_store.store(tmp_path)
    assert record["epoch"] == 1

    torch.save(torch.nn.Linear(2, 1).state_dict(), path)  # replaced without its sidecar: not trusted
    assert read_lineage(path) is None


def test_untracked_save_has_no_run_and_previous_keeps_its_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, path)
    write_lineage(path, {"mlflow_run_id": "abc", "config_hash": "h"}, epoch=3)
    kept = keep_previous(path)
    assert kept is not None and not sidecar_path(path).exists()
    assert read_lineage(kept)["mlflow_run_id"] == "abc"

    torch.save({"w": torch.ones(1)}, path)
    write_lineage(path, None)
    record = json.loads(sidecar_path(path).read_text())
    assert record["mlflow_run_id"] is None and record["config_hash"] is None and record["checkpoint"] == "model.pt"
    sidecar_path(path).write_text("{not json")
    assert read_lineage(path) is None
