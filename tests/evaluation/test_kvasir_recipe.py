"""The results recipe end to end on the bundled sample, at a tiny size: both models trained at the same time
(--jobs 2), predictions, report, and the report rebuilt from the run folders (--report-only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "d_state": 4, "mid_channels": 8, "image_size": [64, 64],
        "batch_size": 2, "num_workers": 0}


def test_recipe_runs_end_to_end(tmp_path: Path) -> None:
    sample = REPO / "tests" / "data" / "kvasir_sample"
    names = sorted(p.stem for p in (sample / "images").iterdir())
    (tmp_path / "test.txt").write_text("\n".join(names[:2]) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "kvasir_recipe.py"), "--data-dir", str(sample),
           "--test-names", str(tmp_path / "test.txt"), "--out", str(out), "--epochs", "2", "--val-fraction", "0.2",
           "--jobs", "2", "--budget-min", "5", "--extra", json.dumps(TINY)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = json.loads((out / "split.json").read_text())
    assert [it["name"] for it in split["test"]] == names[:2]
    assert not {it["name"] for it in split["training"] + split["validation"]} & set(names[:2])
    for model in ("vmunetv2", "basicunet"):
        assert (out / model / "models" / "model.pt").is_file()
        for name in names[:2]:
            assert (out / model / "test_predictions" / f"{name}_mask.png").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "| metric | vmunetv2 | basicunet |" in report
    assert (out / "report" / "overlays.png").is_file() and (out / "report" / "learning_curves.png").is_file()
    for model in ("vmunetv2", "basicunet"):
        run = json.loads((out / model / "run.json").read_text())
        assert run["epochs"] == 2 and run["torch_threads"] >= 1 and run["budget_min"] == 5 and run["jobs"] == 2

    (out / "report" / "report.md").unlink()
    proc = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report" / "report.md").read_text() == report

    (out / "basicunet" / "run.json").unlink()
    proc = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "basicunet run did not finish" in proc.stderr
