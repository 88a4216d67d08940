"""Output folder locks: one run at a time writes into a folder.

The bundle's ``initialize`` takes :func:`lock_folder` on the folder a run writes (training: ``output_dir``,
evaluation: ``eval_dir``, inference: ``pred_dir``). The lock is ``fcntl.flock`` on ``<folder>/.vmunetv2.lock``,
which records the holder's process id, host, start time and command. A second run into the folder is refused at
once with a :class:`FolderInUseError` that names the first run's process id. The kernel releases a flock when its
process dies, so the file a killed run leaves behind is free: the next run takes it over with a WARNING naming the
killed run. A process holds its locks until it exits (then the lock file, and a folder it created that stayed empty,
are removed); taking a lock it holds again is a no-op, so one process may run several workflows into a folder.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderInUseError", "lock_folder"]

logger = logging.getLogger(__name__)

#: The lock file's name in a locked folder.
LOCK_NAME = ".vmunetv2.lock"

#: Folders this process holds: folder -> (lock file descriptor, whether this process created the folder).
_held: dict[Path, tuple[int, bool]] = {}


class FolderInUseError(RuntimeError):
    """Another live run holds the output folder's lock."""


def _describe(record: str) -> str:
    """``process <pid> on <host>, started <time>: <command>`` from a lock file's text."""
    try:
        info = json.loads(record)
    except json.JSONDecodeError:
        return f"unreadable lock record {record[:200]!r}"
    return (f"process {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command')}")


def _record() -> str:
    return json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(sys.argv)[:500],
    })


def _open_locked(path: Path, folder: Path) -> int:
    """A descriptor of ``path`` holding its exclusive flock; raises :class:`FolderInUseError` when another process
    holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            raise FolderInUseError(
                f"output folder {folder} is in use by another run ({_describe(holder)}); wait until it ends or "
                f"write to another folder (the lock is {path})"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass  # the holder removed the file on exit after we opened it: lock the path's new file
        os.close(fd)


def lock_folder(folder: str | os.PathLike) -> bool:
    """Lock ``folder`` (created if missing) for this process until it exits.

    Taking a lock this process holds is a no-op; a lock left by a process that was killed is taken over with a
    WARNING naming the earlier run.

    Args:
        folder: the output folder a run writes.

    Returns:
        True (for config expressions).

    Raises:
        FolderInUseError: naming the holder's process id when another live process holds the lock.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        return True
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _open_locked(path, folder)
    left = os.pread(fd, 4096, 0).decode(errors="replace")
    if left:
        logger.warning("output folder %s: took over the lock left by a run that did not end cleanly (%s)", folder,
                       _describe(left))
    os.ftruncate(fd, 0)
    os.pwrite(fd, _record().encode(), 0)
    if not _held:
        atexit.register(_release_all)
    _held[folder] = (fd, created)
    return True


def _release_all() -> None:
    """Remove this process's lock files, then release the locks; remove folders it created that stayed empty."""
    for folder, (fd, created) in list(_held.items()):
        (folder / LOCK_NAME).unlink(missing_ok=True)
        os.close(fd)
        del _held[folder]
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
