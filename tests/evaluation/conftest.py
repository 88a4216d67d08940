"""Shared pieces of the recipe and study script tests: the test sample with two ids held out as the test set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "kvasir_sample"
# Tiny bundle overrides for every model (BasicUNet's width by model): the scripts run end to end in seconds.
TINY = ["depths=[1, 1, 1, 1]", "dims=16", "image_size=[64, 64]", "batch_size=2",
        "basicunet:network_def#features=[8, 8, 16, 32, 64, 8]"]


@pytest.fixture
def script_args(tmp_path: Path):
    """``(make_cmd, test_names)``: ``make_cmd(script, out, *extra)`` builds a command on the sample with the first two
    ids (sorted) as the test set, 20 % validation and the tiny settings."""
    names = sorted(p.stem for p in (SAMPLE / "images").iterdir())[:2]
    (tmp_path / "test.txt").write_text("\n".join(names) + "\n")

    def make_cmd(script: str, out: Path, *extra: str) -> list[str]:
        sets = [arg for item in TINY for arg in ("--set", item)]
        return [sys.executable, str(REPO / "scripts" / script), "--data-dir", str(SAMPLE), "--test-names",
                str(tmp_path / "test.txt"), "--out", str(out), "--val-fraction", "0.2", *sets, *extra]

    return make_cmd, names
