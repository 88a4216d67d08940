"""scripts/learning_study.py end to end on the bundled sample at a tiny budget: trials, table, curves, no reruns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def test_study_runs_end_to_end(tmp_path: Path, script_args) -> None:
    make_cmd, test_names = script_args
    out = tmp_path / "study"
    cmd = make_cmd("learning_study.py", out, "--budget-s", "2", "--eval-every-s", "1", "--variants", "2")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(out.glob("trials/*.json"))
    assert [t.name for t in trials] == ["basicunet__baseline.json", "basicunet__dropout-0-1.json",
                                        "vmunetv2__baseline.json", "vmunetv2__loss--fused-output-only.json"]
    for t in trials:
        rec = json.loads(t.read_text())
        assert rec["train_cpu_s"] >= 2 and rec["steps"] >= 1 and len(rec["curve"]) >= 2
        assert 0.0 <= rec["best_val_dice"] <= 1.0
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
