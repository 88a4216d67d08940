"""The results recipe end to end on the test sample, at a tiny size and CPU budget: both models trained at the
same time (--jobs 2) by ``monai.bundle run``, scored by evaluate.json, report, refusal to overwrite, --report-only
and --resume; and the script's training equals the same ``monai.bundle run`` typed by hand, weight for weight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO

pytestmark = pytest.mark.slow  # runs scripts/kvasir_recipe.py (training through the bundle) in subprocesses


def test_recipe_runs_end_to_end(tmp_path: Path, script_args) -> None:
    make_cmd, test_names = script_args
    out = tmp_path / "out"
    cmd = make_cmd("kvasir_recipe.py", out, "--budget-s", "3", "--eval-every-s", "1.5", "--jobs", "2")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = json.loads((out / "split.json").read_text())
    assert [it["name"] for it in split["test"]] == test_names
    assert not {it["name"] for it in split["training"] + split["validation"]} & set(test_names)
    for model in ("vmunetv2", "basicunet"):
        assert (out / model / "models" / "model.pt").is_file()
        assert "-m monai.bundle run" in (out / model / "train.log").read_text()  # the bundle trained it
        per_case = (out / model / "eval" / "per_case.csv").read_text().splitlines()
        assert per_case[0] == "name,val_mean_dice,val_mean_iou,val_hd95,tp,fp,tn,fn" and len(per_case) == 3
    report = (out / "report" / "report.md").read_text()
    assert "| metric | vmunetv2 | basicunet |" in report
    assert (out / "report" / "overlays.png").is_file() and (out / "report" / "learning_curves.png").is_file()
    runs = {m: json.loads((out / m / "run.json").read_text()) for m in ("vmunetv2", "basicunet")}
    for run in runs.values():
        assert run["train_cpu_s"] >= 3 and run["torch_threads"] == 1 and len(run["history"]) >= 2
        assert run["overrides"]["budget_cpu_s"] == 3 and run["overrides"]["image_size"] == [64, 64]
    assert runs["basicunet"]["overrides"]["network_def#features"] == [8, 8, 16, 32, 64, 8]
    assert "| train_cpu_s |" in report

    # nothing is overwritten: a new run into the same folder is refused
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
    assert resumed["iterations"] == runs["basicunet"]["iterations"]
    assert resumed["history"] == runs["basicunet"]["history"]
    log = (out / "basicunet" / "train.log").read_text()
    assert "restored settings, model, optimizer, trainer, budget, best_saver" in log


def test_script_training_equals_monai_bundle_run(tmp_path: Path, script_args) -> None:
    """One epoch-budget training through the script and the same overrides typed for ``monai.bundle run`` give
    identical weights (seeded, one thread)."""
    make_cmd, _ = script_args
    out = tmp_path / "script"
    cmd = make_cmd("kvasir_recipe.py", out, "--models", "vmunetv2", "--set", "budget_cpu_s=None",
                   "--set", "epochs=2")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_hand = tmp_path / "by_hand"
    configs = "['configs/train.json','configs/kvasir_cpu.json']"
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--datalist_file",
            str(out / "split.json"), "--output_dir", str(by_hand), "--budget_cpu_s", "$None", "--epochs", "2",
            "--depths", "[1,1,1,1]", "--dims", "16", "--image_size", "[64,64]", "--batch_size", "2"]
    proc = subprocess.run(args, cwd=REPO / "bundle", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)})  # as the script
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = torch.load(out / "vmunetv2" / "models" / "latest.pt", weights_only=True)["model"]
    theirs = torch.load(by_hand / "models" / "latest.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in ours.values())
