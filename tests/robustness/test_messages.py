"""Small settings that used to pass without a word or fail without a hint: bf16/fp16 AMP on a CPU, an empty
``VMUNETV2_SCAN_BACKEND``, a byte order mark in a names file (issue 26, groups J and K)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from vmunetv2_monai.data import read_names
from vmunetv2_monai.ops import amp

from .conftest import REPO


@pytest.mark.parametrize("choice", ["bf16", "fp16"])
def test_half_precision_amp_on_cpu_says_it_runs_in_fp32(choice, caplog, monkeypatch):
    monkeypatch.setattr(amp, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=amp.__name__):
        assert amp.autocast_dtype(choice, "cpu") is None
    assert f"amp={choice!r} on cpu" in caplog.text and "fp32" in caplog.text
    caplog.clear()
    assert amp.autocast_dtype("auto", "cpu") is None and amp.autocast_dtype("off", "cpu") is None
    assert not caplog.text


@pytest.mark.parametrize("value, code, expected", [
    ("", 0, "auto -> "), ("torch", 0, "auto -> torch"), ("bogus", 1, "VMUNETV2_SCAN_BACKEND must be one of"),
])
def test_empty_scan_backend_variable_means_auto(value, code, expected):
    script = ("import torch\nfrom vmunetv2_monai.ops.selective_scan import resolve_backend\n"
              "print('auto ->', resolve_backend('auto', torch.device('cpu')))")
    env = {**os.environ, "VMUNETV2_SCAN_BACKEND": value, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert expected in proc.stdout + proc.stderr


def test_byte_order_mark_in_a_names_file_is_dropped(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffcju0\r\ncju1.jpg\n".encode("utf-8"))
    assert read_names(path) == ["cju0", "cju1"]
