"""A local MLflow store and a tiny ignite engine for the tracking tests (tests/handlers, tests/robustness)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from mlflow.tracking import MlflowClient


def store(tmp_path: Path) -> str:
    """The tracking URI of a sqlite store in ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def runs(uri: str, experiment: str = "t") -> list:
    """The runs of ``experiment`` in the store at ``uri``, oldest first."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def engine(step: Callable[[Engine, Any], Any]) -> Engine:
    """An ignite engine running ``step`` with a 4-item data loader."""
    out = Engine(step)
    out.data_loader = list(range(4))  # MLflowTracker's dataset_param reads engine.data_loader.dataset
    return out
