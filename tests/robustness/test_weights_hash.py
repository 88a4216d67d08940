"""Tampered bundle weights are not used silently (issue 26, group E): a run that reads the bundle's own
``models/model.pt`` compares it with ``large_files.yml`` and logs a WARNING naming the file and both hashes."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from vmunetv2_monai import VMUNetV2
from vmunetv2_monai.bundle.weights import check_bundle_weights

from .conftest import BUNDLE, TINY, disc_pair, workflow

SHIPPED = BUNDLE / "models" / "model.pt"


def _tiny_bundle_model(root) -> str:
    """A tiny network's weights as ``root/models/model.pt`` (``root`` is the runs' ``output_dir``); returns its
    sha256."""
    torch.manual_seed(0)
    net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, deep_supervision=True, keep_unused_stage=False,
                   **{k: v for k, v in TINY.items() if k != "image_size"})
    (root / "models").mkdir(parents=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()


@pytest.mark.skipif(not SHIPPED.is_file() or SHIPPED.stat().st_size < 1 << 20, reason="no shipped weights (LFS)")
def test_the_shipped_model_matches_its_listed_hash():
    assert check_bundle_weights(SHIPPED) is True


@pytest.mark.parametrize("configs", [("inference",), ("train", "evaluate")])
@pytest.mark.parametrize("tampered", [True, False])
@pytest.mark.slow  # runs the bundle's workflows
def test_runs_with_the_bundle_model_warn_on_a_hash_mismatch(tmp_path, capsys, configs, tampered):
    root = tmp_path / "bundle_copy"
    actual = _tiny_bundle_model(root)
    shutil.copy(BUNDLE / "large_files.yml", root / "large_files.yml")  # lists the shipped model's sha256
    listed = (BUNDLE / "large_files.yml").read_text().split('hash_val: "')[1].split('"')[0]
    if not tampered:
        (root / "large_files.yml").write_text((root / "large_files.yml").read_text().replace(listed, actual))
    data = tmp_path / "data"
    for i in range(3):
        disc_pair(data, f"case{i}")
    kwargs = {"dataset_dir": str(data / "images")} if configs == ("inference",) else {
        "dataset_dir": str(data), "val_fraction": 0.0, "test_fraction": 0.34}
    wf = workflow(configs, output_dir=str(root), **kwargs)
    wf.initialize()  # the bundle's logging.conf logs to stdout
    wf.run()
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if "vmunetv2_monai.bundle.weights - WARNING" in ln]
    model = str((root / "models" / "model.pt").resolve())
    if tampered:
        assert len(warnings) == 1 and model in warnings[0] and actual in warnings[0] and listed in warnings[0], warnings
    else:
        assert not warnings, warnings
    out = root / ("predictions" if configs == ("inference",) else "eval")
    assert any(out.iterdir())  # the run still completes
