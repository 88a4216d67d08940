"""The results recipe end to end on the bundled sample, at a tiny size and CPU budget: both models trained at the
same time (--jobs 2), predictions through the bundle, report, refusal to overwrite, and --report-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "size": 64, "batch_size": 2, "features": [8, 8, 16, 32, 64, 8]}


def test_recipe_runs_end_to_end(tmp_path: Path) -> None:
    sample = REPO / "tests" / "data" / "kvasir_sample"
    names = sorted(p.stem for p in (sample / "images").iterdir())
    (tmp_path / "test.txt").write_text("\n".join(names[:2]) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "kvasir_recipe.py"), "--data-dir", str(sample),
           "--test-names", str(tmp_path / "test.txt"), "--out", str(out), "--budget-s", "3", "--eval-every-s", "1.5",
           "--val-fraction", "0.2", "--jobs", "2", "--extra", json.dumps(TINY)]
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
        assert run["budget_cpu_s"] == 3 and run["train_cpu_s"] >= 3 and run["torch_threads"] == 1
        assert run["settings"]["size"] == 64 and len(run["curve"]) >= 2
    assert "| setting: size | 64 | 64 |" in report

    # nothing is overwritten: a new run into the same folder is refused, --resume finishes what is missing
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "use --resume" in proc.stderr

    (out / "report" / "report.md").unlink()
    proc = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report" / "report.md").read_text() == report

    (out / "basicunet" / "run.json").unlink()
    proc = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "basicunet run did not finish" in proc.stderr
