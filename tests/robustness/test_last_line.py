"""The last line a failed run prints names the file, id or value and our reason (not MONAI's wrapper nor the library
error beneath our message), never advises ``weights_only=False``; foreign checkpoint files are named for what they
are; a zip bomb is refused before it is read; a full disk names the file being written."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from vmunetv2_monai.bundle.checks import _summarise_errors
from vmunetv2_monai.checkpoints import expansion_limit, read_checkpoint
from vmunetv2_monai.errors import summary_error

from .conftest import BUNDLE, SAMPLE, TINY_ARGS, cfg, disc_pair, run_bundle, tail, tiny_state

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 123456\n".format("ab" * 32)


def _zip_bomb(path: Path, expanded: int) -> Path:
    """A zip laid out like a torch checkpoint whose one data member deflates ``expanded`` zero bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("bomb/version", b"3\n")
        with archive.open("bomb/data/0", "w") as member:
            chunk = bytes(1 << 20)
            for _ in range(expanded >> 20):
                member.write(chunk)
    return path


def _foreign(kind: str, path: Path) -> Path:
    if kind == "text":
        path.write_text("learning_rate: 0.001\nepochs: 300\n")
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    elif kind == "lfs":
        path.write_text(LFS_POINTER)
    else:
        _zip_bomb(path, 200 << 20)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("torchscript", "is a TorchScript archive"), ("lfs", "is a git-LFS pointer file"), ("bomb", "would expand"),
])
def test_foreign_checkpoints_are_named_for_what_they_are(tmp_path, monkeypatch, kind, reason):
    path = _foreign(kind, tmp_path / "model.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not read this file"))
    with pytest.raises(ValueError, match=reason) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)


def test_zip_bomb_bound_is_above_real_checkpoints(tmp_path):
    path = tiny_state(tmp_path / "model.pt")
    expanded = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    assert expanded <= expansion_limit(path.stat().st_size)
    assert read_checkpoint(path)


def test_pickled_objects_are_refused_without_unsafe_advice(tmp_path, caplog):
    path = tmp_path / "pickled.pt"
    torch.save({"model": io.BytesIO(b"x")}, path)
    with caplog.at_level("DEBUG", logger="vmunetv2_monai.checkpoints"), \
            pytest.raises(ValueError, match="holds pickled Python objects besides tensors") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert any(r.exc_info for r in caplog.records), "torch's own message is kept at DEBUG"


def _monai_wrapped() -> BaseException:
    """ValueError (ours, raised in read_checkpoint) from IndexError (torch), wrapped in MONAI's RuntimeError."""
    try:
        try:
            read_checkpoint(Path(__file__))  # a Python file: torch fails, read_checkpoint names it
        except ValueError as ours:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from ours
    except RuntimeError as wrapper:
        return wrapper
    raise AssertionError("read_checkpoint accepted a Python file")


def test_summary_is_our_named_message_and_the_traceback_keeps_the_chain(capsys):
    err = _monai_wrapped()
    assert isinstance(summary_error(err), ValueError) and __file__ in str(summary_error(err))
    printed: list[BaseException] = []
    _summarise_errors(lambda kind, e, tb: printed.append(e))(type(err), err, err.__traceback__)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("vmunetv2_monai error: ValueError: cannot read checkpoint") and __file__ in last, last
    assert printed == [err]


def test_summary_falls_back_to_the_innermost_library_error():
    try:
        try:
            {}["missing"]
        except KeyError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as err:
        assert isinstance(summary_error(err), KeyError)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    first = min((SAMPLE / "images").iterdir())
    (folder / first.name).write_bytes(first.read_bytes())
    return folder


def _infer(tmp_path: Path, inputs: Path, ckpt: Path, full_disk: bool = False) -> tuple[int, str, str]:
    args = ["--config_file", str(cfg("inference")), "--bundle_root", str(BUNDLE), "--dataset_dir", str(inputs),
            "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(ckpt), "--num_workers", "0", *TINY_ARGS]
    code, log = _run_full_disk(args, tmp_path) if full_disk else run_bundle(args, cwd=tmp_path)
    return code, log, log.strip().splitlines()[-1]


@pytest.mark.parametrize("kind, reason", [
    ("text", "not a PyTorch weights file"), ("torchscript", "is a TorchScript archive"),
    ("lfs", "is a git-LFS pointer file"), ("bomb", "would expand"),
])
@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_inference_command_names_a_foreign_checkpoint_last(tmp_path, inputs, kind, reason):
    ckpt = _foreign(kind, tmp_path / "given.pt")
    before = ckpt.read_bytes()
    code, log, last = _infer(tmp_path, inputs, ckpt)
    assert code != 0 and last.startswith("vmunetv2_monai error: ValueError") and str(ckpt) in last, tail(log)
    assert reason in last, tail(log)
    assert "weights_only=False" not in log and "`weights_only` set to `False`" not in log, tail(log, 60)
    assert ckpt.read_bytes() == before and not list((tmp_path / "out").rglob("*_mask.png"))


#: Child preamble: a full disk for the temporary files of atomic writes (``.tmp<pid>-<name>``), as each writer
#: sees one: Python file writes fail with ENOSPC, ``torch.save`` with its C++ stream error; no disk space is used.
FULL_DISK = """
import builtins, errno, io, shutil, torch
_open, _save = builtins.open, torch.save
class _Full(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
def _full_open(file, mode="r", *args, **kwargs):
    if "/.tmp" in str(file) and "b" in mode and ("w" in mode or "+" in mode):
        return _Full(file, mode.replace("b", ""))
    return _open(file, mode, *args, **kwargs)
def _full_save(obj, f, *args, **kwargs):
    if "/.tmp" in str(f):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: basic_ios::clear: "
                           "iostream error")
    return _save(obj, f, *args, **kwargs)
builtins.open, torch.save = _full_open, _full_save
shutil.disk_usage = lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0)
"""


def _run_full_disk(args: list[str], cwd: Path) -> tuple[int, str]:
    """``python -m monai.bundle run ARGS`` after :data:`FULL_DISK`, in one child process."""
    script = cwd / "full_disk_run.py"
    script.write_text(FULL_DISK + f"import runpy, sys\nsys.argv = ['monai.bundle', 'run', *{args!r}]\n"
                      "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=400, check=False)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow  # runs monai.bundle inference in a subprocess
def test_full_disk_during_inference_names_the_prediction_file(tmp_path, inputs):
    ckpt = tiny_state(tmp_path / "model.pt")
    code, log, last = _infer(tmp_path, inputs, ckpt, full_disk=True)
    assert code != 0 and last.startswith("vmunetv2_monai error: OSError: [Errno 28] cannot write "), tail(log)
    assert f"cannot write {tmp_path / 'out' / 'predictions'}/" in last and "no space left on device" in last, last
    assert "_idat" not in last and not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.slow  # trains through monai.bundle in a subprocess
def test_full_disk_during_training_names_the_checkpoint(tmp_path):
    data = tmp_path / "data"
    for i in range(6):
        disc_pair(data, f"case{i}")
    out = tmp_path / "out"
    args = ["--config_file", str(cfg("train")), "--bundle_root", str(BUNDLE), "--dataset_dir", str(data),
            "--output_dir", str(out), "--num_workers", "0", "--epochs", "1", "--batch_size", "2",
            "--progress_bar", "False", *TINY_ARGS]
    code, log = _run_full_disk(args, tmp_path)
    last = log.strip().splitlines()[-1]
    assert code != 0 and last.startswith("vmunetv2_monai error: OSError: [Errno 28] cannot write "), tail(log)
    assert f"cannot write {out / 'models'}/" in last and "no space left on device" in last, last
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
