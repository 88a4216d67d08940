"""Output folders are locked: a second training, evaluation or inference into a folder in use is refused at once
naming the first run's process id, and the lock a killed run left is taken over with a WARNING."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmunetv2_monai.locks import LOCK_NAME, FolderInUseError, lock_folder

from .conftest import BUNDLE, SAMPLE, TINY_ARGS, cfg, run_bundle, tail, tiny_state

pytestmark = pytest.mark.slow  # every test runs monai.bundle or a Python process in subprocesses

HOLD = "import sys, time; from vmunetv2_monai.locks import lock_folder; lock_folder(sys.argv[1]); " \
       "print('locked', flush=True); time.sleep(float(sys.argv[2]))"


def _holder(folder: Path, seconds: float = 300) -> subprocess.Popen:
    """A process that locks ``folder`` and sleeps ``seconds`` (returned once it holds the lock)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _wait_for_lock(folder: Path, proc: subprocess.Popen, timeout: float = 300) -> dict:
    """The lock record of ``folder`` once ``proc`` holds it."""
    path, end = folder / LOCK_NAME, time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the first run ended before it took the lock"
        if path.is_file() and path.read_text():
            record = json.loads(path.read_text())
            if record["pid"] == proc.pid:
                return record
        time.sleep(0.5)
    raise AssertionError(f"{proc.pid} did not lock {folder} in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def test_lock_is_refused_to_a_second_process_and_released_on_exit(tmp_path):
    folder = tmp_path / "new" / "out"
    holder = _holder(folder, seconds=3)
    try:
        with pytest.raises(FolderInUseError, match=f"process {holder.pid} on ") as err:
            lock_folder(folder)
        assert str(folder) in str(err.value)
    finally:
        holder.wait(timeout=60)
    assert holder.returncode == 0 and not folder.exists(), "the lock file and the empty folder it made go on exit"


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "out"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "model.pt").write_bytes(b"kept")
    holder = _holder(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by the killed run
    with caplog.at_level(logging.WARNING, logger="vmunetv2_monai.locks"):
        assert lock_folder(folder) and lock_folder(folder)  # a lock this process holds is taken again at no cost
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"process {holder.pid} on " in warnings[0] and str(folder) in warnings[0]
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (folder / "models" / "model.pt").read_bytes() == b"kept"


def _train_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["--config_file", str(cfg("train")), "--bundle_root", str(BUNDLE), "--dataset_dir", str(data),
            "--output_dir", str(out), "--num_workers", "0", "--epochs", str(epochs), "--batch_size", "2",
            "--progress_bar", "False", *TINY_ARGS]


def test_second_training_into_a_folder_in_use_is_refused_and_a_killed_runs_lock_taken_over(tmp_path, dataset):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *_train_args(dataset, out, 10_000)],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock(out, first)
        start = time.monotonic()
        code, log = run_bundle(_train_args(dataset, out, 1), cwd=tmp_path)
        last = log.strip().splitlines()[-1]
        assert code != 0 and last.startswith("vmunetv2_monai error: FolderInUseError"), tail(log)
        assert f"output folder {out} is in use by another run (process {first.pid} on " in last, last
        assert "Epoch[1]" not in log and time.monotonic() - start < 120
        assert first.poll() is None and json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    code, log = run_bundle(_train_args(dataset, out, 1), cwd=tmp_path)
    assert code == 0, tail(log, 40)
    assert "took over the lock left by a run that did not end cleanly" in log and f"process {first.pid} " in log
    assert (out / "models" / "model.pt").is_file() and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("workflow", ["inference", "evaluate"])
def test_inference_or_evaluation_into_a_folder_in_use_is_refused(tmp_path, dataset, workflow):
    out = tmp_path / "out"
    folder = out / ("predictions" if workflow == "inference" else "eval")
    configs = cfg("inference") if workflow == "inference" else cfg("train", "evaluate")
    inputs = SAMPLE / "images" if workflow == "inference" else dataset
    (folder / "kept.csv").parent.mkdir(parents=True)
    (folder / "kept.csv").write_text("name,dice\n")
    # a real checkpoint at <output_dir>/models/model.pt: inference checks it before anything else
    (out / "models").mkdir()
    tiny_state(out / "models" / "model.pt")
    holder = _holder(folder)
    try:
        code, log = run_bundle(["--config_file", repr(configs), "--bundle_root", str(BUNDLE), "--dataset_dir",
                                str(inputs), "--output_dir", str(out), "--num_workers", "0", *TINY_ARGS],
                               cwd=tmp_path)
    finally:
        _stop(holder)
    last = log.strip().splitlines()[-1]
    assert code != 0 and last.startswith("vmunetv2_monai error: FolderInUseError"), tail(log)
    assert f"output folder {folder} is in use by another run (process {holder.pid} on " in last, last
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME, "kept.csv"]
    assert (folder / "kept.csv").read_text() == "name,dice\n"
