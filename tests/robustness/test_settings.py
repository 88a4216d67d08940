"""No silent settings: typo'd config ids are refused through the Python API as on the command line, a resume that
changes settings applies them or refuses naming each one, and a budget extended after a finished cosine follows the
documented (stretched) schedule."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.bundle import run as bundle_run

from .conftest import BUNDLE, CONFIGS, TINY, TINY_ARGS, cfg, error_chain, run_bundle, tail, workflow


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


@pytest.mark.slow  # runs monai.bundle in a subprocess
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


def _train(data, out, lrs: list | None = None, **overrides) -> None:
    """Train the tiny network in this process; with ``lrs``, record the learning rate of every iteration."""
    wf = workflow(("train",), dataset_dir=str(data), output_dir=str(out), progress_bar=False,
                  **{"batch_size": 2, **overrides})
    wf.initialize()
    if lrs is not None:
        optimizer = wf.parser.get_parsed_content("optimizer")
        trainer = wf.parser.get_parsed_content("train#trainer")
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(optimizer.param_groups[0]["lr"]))
    wf.run()


@pytest.mark.slow  # trains a workflow
def test_resume_with_changed_fixed_settings_is_refused_naming_each(dataset, tmp_path):
    out = tmp_path / "out"
    _train(dataset, out, epochs=1)
    latest = out / "models" / "latest.pt"
    before = latest.read_bytes()
    chain = error_chain(lambda: _train(dataset, out, epochs=2, resume=True, batch_size=3, dims=24,
                                       image_size=[48, 48], weight_decay=0.01))
    assert "ResumeSettingsError: cannot resume" in chain and str(latest) in chain
    for named in ("'batch_size' 2 -> 3", "'dims' 16 -> 24", "'image_size' [32, 32] -> [48, 48]",
                  "'weight_decay' 0.05 -> 0.01"):
        assert named in chain
    assert "does not fit" not in chain  # checked before the weights of another network size are loaded
    assert latest.read_bytes() == before


@pytest.mark.slow  # trains a workflow twice
def test_resume_applies_a_new_learning_rate_and_extended_epochs_follow_the_stretched_cosine(
        dataset, tmp_path, capsys):
    out, peak, eta_min = tmp_path / "out", 1e-3, 1e-5
    first: list[float] = []
    _train(dataset, out, first, epochs=2, learning_rate=peak, lr_eta_min=eta_min)
    n = len(first)  # iterations of the finished run: its cosine reached eta_min at its end
    assert first[-1] < 0.5 * peak
    resumed: list[float] = []
    capsys.readouterr()
    _train(dataset, out, resumed, epochs=4, resume=True, learning_rate=peak / 2, lr_eta_min=eta_min)
    log = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
    assert "WARNING - resuming" in log and "'learning_rate' 0.001 -> 0.0005" in log and "'epochs' 2 -> 4" in log
    # the documented schedule: doubling the epochs of a finished run resumes halfway down the (new) cosine
    assert len(resumed) == n
    assert resumed[0] == pytest.approx((peak / 2 + eta_min) / 2)
    assert all(b < a for a, b in zip(resumed, resumed[1:], strict=False))
    assert torch.load(out / "models" / "latest.pt", weights_only=True)["settings"]["learning_rate"] == peak / 2


@pytest.mark.slow  # trains a workflow
def test_resume_of_a_checkpoint_without_settings_warns_and_continues(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    _train(dataset, out, epochs=1)
    latest = out / "models" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    del state["settings"]
    torch.save(state, latest)
    capsys.readouterr()
    _train(dataset, out, epochs=2, resume=True, batch_size=3)
    assert "has no entry for settings (saved by an earlier version)" in capsys.readouterr().out
    trainer = torch.load(latest, weights_only=True)["trainer"]
    assert trainer["max_epochs"] == 2 and trainer["iteration"] == 2 * trainer["epoch_length"]


@pytest.mark.slow  # trains through monai.bundle in subprocesses
def test_resume_command_with_a_changed_batch_size_exits_1_naming_it(dataset, tmp_path):
    out = tmp_path / "out"
    args = [*map(str, ("--config_file", cfg("train")[0], "--meta_file", CONFIGS / "metadata.json",
                       "--bundle_root", BUNDLE, "--dataset_dir", dataset, "--output_dir", out, "--num_workers", 0,
                       "--epochs", 1, "--batch_size", 2, "--progress_bar", False)), *TINY_ARGS]
    code, log = run_bundle(args, cwd=tmp_path)
    assert code == 0, tail(log)
    before = (out / "models" / "latest.pt").read_bytes()
    code, log = run_bundle([*args, "--resume", "True", "--batch_size", "4"], cwd=tmp_path)
    last = tail(log, 1)
    assert code == 1 and last.startswith("vmunetv2_monai error: ResumeSettingsError"), tail(log)
    assert "'batch_size' 2 -> 4" in last and "latest.pt" in last
    assert (out / "models" / "latest.pt").read_bytes() == before


@pytest.mark.slow  # trains a workflow
def test_resume_without_latest_says_it_starts_over_and_does_not_advise_a_resume(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    _train(dataset, out, epochs=1)
    (out / "models" / "latest.pt").unlink()
    capsys.readouterr()
    _train(dataset, out, epochs=1, resume=True)
    log = capsys.readouterr().out
    assert "'resume' is set but" in log and "latest.pt does not exist: nothing to resume" in log
    assert "model.pt is from an earlier run: kept as" in log and "--resume True continues" not in log
    assert len(list((out / "models").glob("model.prev-*.pt"))) == 1
