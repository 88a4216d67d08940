"""The results recipe end to end on the bundled sample, at a tiny size and CPU budget: both models trained at the
same time (--jobs 2), predictions through the bundle, report, refusal to overwrite, and --report-only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def test_recipe_runs_end_to_end(tmp_path: Path, script_args) -> None:
    make_cmd, test_names = script_args
    out = tmp_path / "out"
    cmd = make_cmd("kvasir_recipe.py", out, "--budget-s", "3", "--eval-every-s", "1.5", "--jobs", "2")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = json.loads((out / "split.json").read_text())
    assert [it["name"] for it in split["test"]] == test_names
    assert not {it["name"] for it in split["training"] + split["validation"]} & set(test_names)
    for model in ("vmunetv2", "basicunet"):
        assert (out / model / "models" / "model.pt").is_file()
        for name in test_names:
            assert (out / model / "test_predictions" / f"{name}_mask.png").is_file()
    report = (out / "report" / "report.md").read_text()
    assert "| metric | vmunetv2 | basicunet |" in report
    assert (out / "report" / "overlays.png").is_file() and (out / "report" / "learning_curves.png").is_file()
    runs = {m: json.loads((out / m / "run.json").read_text()) for m in ("vmunetv2", "basicunet")}
    for run in runs.values():
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

    # --resume finishes the model whose run did not finish, from its latest.pt (the budget is already spent)
    proc = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((out / "basicunet" / "run.json").read_text())
    assert resumed["steps"] == runs["basicunet"]["steps"] and resumed["curve"] == runs["basicunet"]["curve"]
    assert "resumed from" in proc.stderr
