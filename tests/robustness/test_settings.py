"""No silent settings: typo'd config ids are refused through the Python API as on the command line, a resume that
changes settings applies them or refuses naming each one, and a budget extended after a finished cosine follows the
documented (stretched) schedule."""

from __future__ import annotations

import pytest
from monai.bundle import run as bundle_run

from .conftest import BUNDLE, CONFIGS, TINY, cfg, error_chain, workflow


@pytest.mark.parametrize("overrides, named", [
    ({"epoch": 1}, "'epoch' (did you mean 'epochs'?)"),
    ({"learningrate": 0.1}, "'learningrate' (did you mean 'learning_rate'"),
    ({"nosuch": 1}, "'nosuch'"),
])
def test_typo_ids_are_refused_through_config_workflow(dataset, tmp_path, overrides, named):
    wf = workflow(("train",), dataset_dir=str(dataset), output_dir=str(tmp_path / "out"), **overrides)
    chain = error_chain(wf.initialize)
    assert "unknown config id" in chain and named in chain
    assert not (tmp_path / "out").exists()


def test_typo_ids_are_refused_through_bundle_run_for_inference(tmp_path):
    def go():
        bundle_run(config_file=cfg("inference"), meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
                   bundle_root=str(BUNDLE), dataset_dir=str(tmp_path), output_dir=str(tmp_path / "pred"),
                   treshold=0.3, **TINY)

    chain = error_chain(go)
    assert "unknown config id(s), not defined in the config files in" in chain
    assert "'treshold' (did you mean 'threshold'" in chain and "dataset_dir" not in chain
    assert not (tmp_path / "pred").exists()


def test_known_ids_and_tracking_ids_pass_through_config_workflow(dataset, tmp_path):
    wf = workflow(("train",), dataset_dir=str(dataset), output_dir=str(tmp_path / "out"), batch_size=2,
                  **{"network_def#use_checkpoint": False, "run_name": "x", "mlflow_job": "y"})
    wf.initialize()
