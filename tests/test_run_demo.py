"""README command 1's main job: the shipped model on the bundled sample, per-image Dice, overlays, MLflow runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundle.test_shipped_model import DICE_FLOOR

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # runs scripts/run_demo.py (monai.bundle inference and evaluation) in a subprocess


def test_main_job_scores_the_shipped_model_and_logs_to_mlflow(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "scripts" / "run_demo.py"), "--output-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr  # the bundle's logging.conf sends log lines to stdout
    names = sorted(p.stem for p in (REPO / "bundle" / "sample_data" / "images").iterdir())
    for name in names:
        assert f"{name}  Dice " in log
        assert (out / "predictions" / f"{name}_mask.png").is_file()
        assert (out / "predictions" / f"{name}_overlay.png").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["images"] == len(names) and summary["mean_dice"] >= DICE_FLOOR
    assert (out / "overlays.png").stat().st_size > 10_000

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("vmunetv2_demo")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"infer_shipped_model", "evaluate_shipped_model"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    ev = runs["evaluate_shipped_model"]
    assert abs(ev.data.metrics["mean_dice"] - summary["mean_dice"]) < 1e-9
    assert ev.data.tags["inference_run_id"] == runs["infer_shipped_model"].info.run_id
    assert {a.path for a in client.list_artifacts(ev.info.run_id)} >= {"per_case.csv", "summary.json", "overlays.png"}

    # nothing is overwritten: the same folder again is refused
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "not empty" in again.stdout + again.stderr
