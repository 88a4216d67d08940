"""scripts/learning_study.py end to end on the bundled sample at a tiny budget: trials, table, curves, no reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "size": 64, "batch_size": 2, "features": [8, 8, 16, 32, 64, 8]}


def test_study_runs_end_to_end(tmp_path: Path) -> None:
    sample = REPO / "tests" / "data" / "kvasir_sample"
    names = sorted(p.stem for p in (sample / "images").iterdir())
    (tmp_path / "test.txt").write_text("\n".join(names[:2]) + "\n")
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "scripts" / "learning_study.py"), "--data-dir", str(sample),
           "--test-names", str(tmp_path / "test.txt"), "--out", str(out), "--budget-s", "2", "--eval-every-s", "1",
           "--variants", "2", "--val-fraction", "0.2", "--extra", json.dumps(TINY)]
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
    assert not {it["name"] for it in split["training"] + split["validation"]} & set(names[:2])  # test never read
    table = (out / "study.md").read_text()
    assert "| loss: fused output only |" in table and "| dropout 0.1 |" in table
    assert (out / "learning_curves.png").stat().st_size > 1000
    # a rerun keeps the finished trials instead of training them again
    stamps = [t.stat().st_mtime_ns for t in trials]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.stat().st_mtime_ns for t in trials] == stamps
