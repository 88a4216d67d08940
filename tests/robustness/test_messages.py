"""Small settings that used to pass without a word or fail without a hint: bf16/fp16 AMP on a CPU, an empty
``VMUNETV2_SCAN_BACKEND``, a byte order mark in a names file, relative data list paths, 12-bit data in a 16-bit
PNG (issue 26, groups J and K)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from vmunetv2_monai.bundle.checks import check_options
from vmunetv2_monai.data import load_splits, read_names
from vmunetv2_monai.ops import amp

from .conftest import BUNDLE, CONFIGS, REPO, TINY_ARGS, cfg, run_bundle, tail


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
@pytest.mark.slow  # a Python subprocess per value
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


@pytest.mark.slow  # runs monai.bundle in subprocesses
def test_relative_data_list_paths_are_read_from_the_list_folder_or_named_with_the_paths_tried(dataset, tmp_path):
    entries = [{"image": f"images/case{i}.png", "label": f"masks/case{i}.png"} for i in range(6)]
    good = dataset / "list.json"
    good.write_text(json.dumps({"training": entries[:4], "validation": entries[4:]}))
    splits = load_splits(datalist_file=good)
    assert splits["training"][0]["image"] == str(dataset.resolve() / "images" / "case0.png")
    assert splits["validation"][1]["name"] == "case5"
    bad = tmp_path / "elsewhere" / "list.json"
    bad.parent.mkdir()
    bad.write_text(good.read_text())
    args = ["--config_file", cfg("train")[0], "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root",
            str(BUNDLE), "--datalist_file", str(bad), "--output_dir", str(tmp_path / "out"), "--epochs", "1",
            *TINY_ARGS]
    code, log = run_bundle(args, cwd=tmp_path)
    last = tail(log, 1)
    assert code == 1 and last.startswith("vmunetv2_monai error:"), tail(log)
    assert "image file not found: images/case0.png" in last and str(bad) in last
    assert str(tmp_path / "elsewhere" / "images" / "case0.png") in last and str(tmp_path / "images") in last


@pytest.mark.parametrize("value", ["abc", "[64,x]", "[64,64,64]", "0", "[64.5,64]"])
@pytest.mark.slow  # runs monai.bundle in subprocesses
def test_bad_image_size_on_the_command_line_exits_1_naming_it(dataset, tmp_path, value):
    args = ["--config_file", cfg("inference")[0], "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root",
            str(BUNDLE), "--dataset_dir", str(dataset / "images"), "--output_dir", str(tmp_path / "out"),
            "--image_size", value]
    code, log = run_bundle(args, cwd=tmp_path, timeout=300)
    last = tail(log, 1)
    assert code == 1 and last.startswith("vmunetv2_monai error: ValueError: bad value"), tail(log)
    assert "for 'image_size': expected 2 whole numbers >= 1" in last
    assert not (tmp_path / "out").exists()


def test_image_size_as_one_number_or_a_pair_passes():
    assert check_options({"image_size": [64, 96]}) and check_options({"image_size": (64, 64), "roi_size": 64})


def _image(path, intensity: str) -> np.ndarray:
    """``path`` through inference.json's ``load_transforms`` (images only) with ``intensity``: (3, W, H) in
    [0, 1]."""
    parser = ConfigParser()
    parser.read_config(cfg("inference"))
    parser.update({"intensity": intensity})
    return np.asarray(Compose(parser.get_parsed_content("load_transforms"))({"image": str(path)})["image"])


def test_12_bit_data_in_a_16_bit_png_is_named_in_a_warning_and_minmax_reads_it(tmp_path, caplog):
    ramp = np.linspace(0, 4095, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "twelve_bit.png"
    Image.fromarray(ramp).save(path)
    with caplog.at_level(logging.WARNING, logger="vmunetv2_monai.data.transforms"):
        fixed = _image(path, "fixed")
        _image(path, "fixed")
    warnings = [r.getMessage() for r in caplog.records if "12-bit data?" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "--intensity minmax" in warnings[0], warnings
    assert fixed.max() < 0.07  # the documented rule: 0-16 of 255 with intensity fixed
    assert _image(path, "minmax").max() == pytest.approx(1.0)
    full = tmp_path / "sixteen_bit.png"
    Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)).save(full)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vmunetv2_monai.data.transforms"):
        assert _image(full, "fixed").max() == pytest.approx(1.0)
    assert not [r for r in caplog.records if "12-bit" in r.getMessage()]
