"""Shared pieces of the recipe and study script tests: the bundled sample with two ids held out as the test set."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "kvasir_sample"
# Tiny TrainConfig changes for every model: the scripts run end to end in seconds.
TINY = {"depths": [1, 1, 1, 1], "dims": 16, "size": 64, "batch_size": 2, "features": [8, 8, 16, 32, 64, 8]}


@pytest.fixture
def script_args(tmp_path: Path):
    """``(make_cmd, test_names)``: ``make_cmd(script, out, *extra)`` builds a command on the sample with the first two
    ids (sorted) as the test set, 20 % validation and the tiny settings."""
    names = sorted(p.stem for p in (SAMPLE / "images").iterdir())[:2]
    (tmp_path / "test.txt").write_text("\n".join(names) + "\n")

    def make_cmd(script: str, out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "scripts" / script), "--data-dir", str(SAMPLE), "--test-names",
                str(tmp_path / "test.txt"), "--out", str(out), "--val-fraction", "0.2", "--extra", json.dumps(TINY),
                *extra]

    return make_cmd, names
