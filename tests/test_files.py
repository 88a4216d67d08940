"""The one atomic writer (:mod:`vmunetv2_monai.files`): temporary name beside the target that fits the file system,
fsync and mode 0644 before the rename, the old file kept on a failed or full-disk write, and a kill during a write
leaves nothing behind for long."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmunetv2_monai import files
from vmunetv2_monai.files import (
    FILE_MODE,
    NAME_MAX,
    atomic_write,
    copy_atomic,
    remove_stale_temps,
    remove_stale_temps_in,
    temp_name,
    write_json,
)

FILES = Path(files.__file__)


def test_orphan_temp_file_of_a_killed_writer_is_removed(tmp_path):
    target = tmp_path / "latest.pt"
    target.write_bytes(b"old")
    # the writer loads files.py alone (standard library only), so it starts fast
    code = ("import importlib.util, time\n"
            f"spec = importlib.util.spec_from_file_location('atomic', {str(FILES)!r})\n"
            "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
            "def w(p):\n open(p, 'wb').write(b'partial'); print('writing', flush=True); time.sleep(60)\n"
            f"atomic.atomic_write({str(target)!r}, w)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    orphan = tmp_path / f".tmp{proc.pid}-latest.pt"
    assert orphan.exists() and target.read_bytes() == b"old"
    atomic_write(target, lambda p: Path(p).write_bytes(b"new"))
    assert not orphan.exists() and target.read_bytes() == b"new"


def test_temp_file_of_a_live_writer_is_left_alone(tmp_path):
    live = tmp_path / f".tmp{os.getppid()}-x.pt"
    live.write_bytes(b"in progress")
    assert remove_stale_temps(tmp_path / "x.pt") == [] and live.exists()


@pytest.mark.parametrize("failure", ["enospc", "torch_stream"])
def test_full_disk_is_named_and_the_old_file_survives(tmp_path, monkeypatch, failure):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says on a full disk

    if failure == "torch_stream":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(OSError, match="cannot write .*model.pt: no space left on device") as err:
        atomic_write(target, write)
    assert err.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_full_disk_on_a_real_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN); the simulated ENOSPC tests cover it")
    try:
        (mnt / "model.pt").write_bytes(b"old")
        with pytest.raises(OSError, match="no space left on device"):
            atomic_write(mnt / "model.pt", lambda p: torch.save(torch.zeros(100_000), p))
        assert (mnt / "model.pt").read_bytes() == b"old"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_temporary_names_fit_and_stale_ones_are_found(tmp_path):
    target = tmp_path / ("z" * (NAME_MAX - 7) + ".nii.gz")
    name = temp_name(target, pid=4_000_000)
    assert len(name.encode()) <= NAME_MAX and name.endswith(".nii.gz") and name.startswith(".tmp4000000-")
    assert temp_name(tmp_path / "model.pt", pid=12) == ".tmp12-model.pt"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"ok"))
    assert target.read_bytes() == b"ok" and [p.name for p in tmp_path.iterdir()] == [target.name]
    orphan = tmp_path / name  # left by a process that is gone
    orphan.write_bytes(b"half")
    assert remove_stale_temps(target) == [orphan] and not orphan.exists()



def test_written_file_is_synced_with_mode_0644(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    old = os.umask(0o077)
    try:
        target = atomic_write(tmp_path / "report.md", lambda tmp: Path(tmp).write_text("text"))
    finally:
        os.umask(old)
    assert target.read_text() == "text" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert synced == [str(tmp_path / temp_name(target))]


def test_copy_is_atomic_and_a_spool_sweep_keeps_live_writers(tmp_path):
    source = tmp_path / "received.bin"
    source.write_bytes(os.urandom(3 << 20))
    spool = tmp_path / "spool"
    copy = copy_atomic(source, spool / "1.2.3.dcm")
    assert copy.read_bytes() == source.read_bytes() and [p.name for p in spool.iterdir()] == ["1.2.3.dcm"]
    stale, live = spool / temp_name(spool / "4.5.dcm", pid=4_000_000), spool / temp_name(spool / "6.dcm", os.getppid())
    stale.write_bytes(b"partial")
    live.write_bytes(b"in progress")
    assert remove_stale_temps_in(spool) == [stale] and live.exists() and copy.exists()


def test_a_wrapped_write_error_is_named_on_one_line(tmp_path):
    """Writers such as MONAI's SaveImage wrap the OSError in a RuntimeError whose message holds a traceback: the
    error names the target and the underlying OSError on one line."""
    target = tmp_path / "mask.png"

    def write(tmp: str) -> None:
        try:
            raise OSError(errno.EACCES, "Permission denied")
        except OSError as err:
            raise RuntimeError("SaveImage cannot find a suitable writer.\nTraceback (most recent call last):\n  ...") \
                from err

    with pytest.raises(OSError) as info:
        atomic_write(target, write)
    assert info.value.errno == errno.EACCES and "\n" not in str(info.value)
    assert str(info.value).endswith(f"cannot write {target}: PermissionError: [Errno 13] Permission denied")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_write_json_round_trips_with_a_final_newline(tmp_path):
    target = write_json(tmp_path / "sub" / "summary.json", {"mean_dice": 0.5, "names": ["a"]})
    assert target == tmp_path / "sub" / "summary.json"
    assert target.read_text() == '{\n  "mean_dice": 0.5,\n  "names": [\n    "a"\n  ]\n}\n'
    assert oct(target.stat().st_mode & 0o777) == oct(FILE_MODE) and list(target.parent.iterdir()) == [target]
