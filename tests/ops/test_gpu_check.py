"""scripts/gpu_check.py on CPU, up to the CUDA part: the smoke run (same code, small sizes, ``cpu``/``torch`` in
place of ``mamba``, no build, no bundle runs) and the refusal without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # runs scripts/gpu_check.py in subprocesses

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _run(out: Path, *args: str) -> tuple[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    report = out / "gpu_check.json"
    assert report.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(report.read_text())


def test_smoke_run_measures_every_section(tmp_path) -> None:
    rc, report = _run(tmp_path, "--smoke", "--skip-bundle")
    assert rc == 0 and report["failed"] == [], report
    parity = report["scan_parity"]
    assert len(parity) == 4
    for row in parity:
        assert set(row["torch_vs_cpu"]) == {"out", "du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"}
        assert max(row["torch_vs_cpu"].values()) < 1e-4, row
        assert row["torch_fwd_ms"] > 0 and row["cpu_fwd_bwd_ms"] > 0
    steps = report["train_step_per_backend"]
    assert steps["torch_vs_cpu_grad_rel_err_max"]["value"] < 1e-3
    assert abs(steps["torch"]["loss"] - steps["cpu"]["loss"]) < 1e-4
    assert set(report["eval_throughput"]) == {"batch1_fp32_images_per_s", "batch2_fp32_images_per_s"}
    assert report["train_step"]["fp32_step_s"] > 0 and report["train_step"]["batch"] == 2
    assert report["backends"]["torch"]["ok"] and (tmp_path / "gpu_check.log").exists()
    latency = report["latency"]
    for case in ("vmunetv2_default_256", "vmunetv2_shipped_128", "basicunet_default_256", "basicunet_half_128"):
        assert latency[f"{case}_fp32_eager_images_per_s"] > 0 and latency[f"{case}_fp32_graph_images_per_s"] > 0
        assert latency[f"{case}_fp32_graph_rel_err"] == 0.0  # on CPU the wrapper calls the network itself


def test_sections_run_only_what_is_asked(tmp_path) -> None:
    rc, report = _run(tmp_path, "--smoke", "--sections", "latency")
    assert rc == 0 and report["failed"] == [], report
    assert {"environment", "backends", "latency"} <= set(report) and "scan_parity" not in report
    assert "bundle" not in report and "kvasir" not in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="covers a machine without CUDA")
def test_without_a_gpu_it_fails_loudly(tmp_path) -> None:
    rc, report = _run(tmp_path, "--skip-build")
    assert rc == 1 and "no CUDA device" in report["failed"]
