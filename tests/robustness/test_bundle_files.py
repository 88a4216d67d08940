"""A corrupt ``configs/metadata.json`` or config file (issue 26, group J): every entry point of this package names
the file and the reason on its last line; ``python -m monai.bundle run`` fails inside MONAI before any code of this
package runs (documented limit, checked here so that a change is noticed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmunetv2_monai.bundle import Bundle
from vmunetv2_monai.errors import BundleFileError, check_config_files
from vmunetv2_monai.evaluation.recipe import bundle_command

from .conftest import BUNDLE, run_bundle, tail

BROKEN = '{"version": "0.5.0",\n "name": \n'  # truncated: line 3 column 1


@pytest.fixture
def broken_bundle(tmp_path: Path) -> Path:
    """A copy of the bundle's configs (weights and data are not read) with a truncated metadata.json."""
    copy = tmp_path / "vmunetv2"
    shutil.copytree(BUNDLE / "configs", copy / "configs")
    (copy / "configs" / "metadata.json").write_text(BROKEN)
    return copy


def _named(text: str, path: Path) -> bool:
    return f"cannot read {path}: not valid JSON (Expecting value at line 3 column 1)" in text


def test_check_names_the_file_line_and_column(broken_bundle):
    meta = broken_bundle / "configs" / "metadata.json"
    with pytest.raises(BundleFileError) as err:
        check_config_files(broken_bundle / "configs" / "train.json", meta)
    assert _named(str(err.value), meta), err.value
    with pytest.raises(BundleFileError, match="the file does not exist"):
        check_config_files(broken_bundle / "configs" / "nosuch.json")
    assert check_config_files(*sorted((BUNDLE / "configs").glob("*.json")))


def test_scripts_and_inference_api_name_the_file(broken_bundle):
    meta = broken_bundle / "configs" / "metadata.json"
    with pytest.raises(BundleFileError) as err:  # kvasir_recipe.py, learning_study.py
        bundle_command(broken_bundle, ["train", "evaluate"], {"epochs": 1})
    assert _named(str(err.value), meta)
    # this package's MONAI Label app: tests/label/test_app_files.py (label environment)
    with pytest.raises(BundleFileError) as err:  # Bundle.config: Predictor.from_bundle (the DICOM service), scripts
        Bundle(broken_bundle).config("inference")
    assert _named(str(err.value), meta)
    (broken_bundle / "configs" / "metadata.json").write_text((BUNDLE / "configs" / "metadata.json").read_text())
    (broken_bundle / "configs" / "inference.json").write_text('{"imports": [}')
    with pytest.raises(BundleFileError) as err:
        Bundle(broken_bundle).config("inference")
    assert f"cannot read {broken_bundle / 'configs' / 'inference.json'}: not valid JSON" in str(err.value)


@pytest.mark.slow  # runs vmunetv2-dicom in a subprocess
def test_dicom_service_exits_1_naming_the_metadata_file(broken_bundle, tmp_path):
    dcm = tmp_path / "in.dcm"
    dcm.write_bytes(b"")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", "from vmunetv2_monai.dicom.cli import main; raise SystemExit(main())",
           "--files", str(dcm), "--bundle-dir", str(broken_bundle), "--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    last = tail(proc.stdout + proc.stderr, 1)
    assert proc.returncode == 1 and _named(last, broken_bundle / "configs" / "metadata.json"), tail(proc.stderr)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow  # runs monai.bundle in a subprocess
def test_monai_bundle_run_fails_in_monai_before_the_package_runs(broken_bundle, tmp_path):
    """MONAI reads metadata.json in ConfigWorkflow.__init__, before it evaluates any config entry, and MONAI 1.6
    refuses handler classes outside ``logging`` in logging.conf (the one file it reads earlier): the last line is
    MONAI's bare JSONDecodeError (line and column; the traceback shows read_meta). Nothing is written."""
    code, log = run_bundle(["--config_file", "configs/inference.json", "--dataset_dir", str(BUNDLE / "sample_data"),
                            "--output_dir", str(tmp_path / "out")], cwd=broken_bundle)
    assert code == 1 and "in read_meta" in log, tail(log)
    assert tail(log, 1) == "json.decoder.JSONDecodeError: Expecting value: line 3 column 1 (char 31)", tail(log)
    assert not (tmp_path / "out").exists()
