"""scripts/learning_study.py end to end on the test sample at a tiny budget: trials through the bundle, table,
curves, no reruns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs scripts/learning_study.py (training through the bundle) in a subprocess


def test_study_runs_end_to_end(tmp_path: Path, script_args) -> None:
    make_cmd, test_names = script_args
    out = tmp_path / "study"
    cmd = make_cmd("learning_study.py", out, "--budget-s", "2", "--eval-every-s", "1", "--variants", "2",
                   "--jobs", "2")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(out.glob("trials/*.json"))
    assert [t.name for t in trials] == ["basicunet__dropout-0-1.json", "basicunet__recipe.json",
                                        "vmunetv2__loss--fused-output-only.json", "vmunetv2__recipe.json"]
    for t in trials:
        rec = json.loads(t.read_text())
        assert rec["train_cpu_s"] >= 2 and rec["iterations"] >= 1 and len(rec["history"]) >= 2
        assert 0.0 <= rec["best_val_mean_dice"] <= 1.0
        assert "-m monai.bundle run" in (t.with_suffix("") / "train.log").read_text()
    fused = json.loads((out / "trials" / "vmunetv2__loss--fused-output-only.json").read_text())
    assert fused["changes"] == {"network_def#deep_supervision": False}
    assert "--network_def#deep_supervision False" in (out / "trials" / "vmunetv2__loss--fused-output-only" /
                                                       "train.log").read_text()
    assert "--network_def#deep_supervision" not in (out / "trials" / "vmunetv2__recipe" / "train.log").read_text()
    split = json.loads((out / "split.json").read_text())
    assert not {it["name"] for it in split["training"] + split["validation"]} & set(test_names)  # test never read
    table = (out / "study.md").read_text()
    assert "| loss: fused output only |" in table and "| dropout 0.1 |" in table
    assert (out / "learning_curves.png").stat().st_size > 1000
    # a rerun keeps the finished trials instead of training them again
    stamps = [t.stat().st_mtime_ns for t in trials]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.stat().st_mtime_ns for t in trials] == stamps
