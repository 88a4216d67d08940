"""Atomic file writes: write a temporary file in the target folder, fsync it, then ``os.replace`` it into place.

The temporary file is ``.tmp<pid>-<name>`` beside the target, or ``.tmp<pid>-<hash><suffixes>`` (a fixed-length
hash of the name) when that would pass :data:`NAME_MAX` bytes, so a long target name still gets a temporary name
the file system accepts, and writers that infer the format from the name (``nib.save``, ``fig.savefig``) still work.
The written file gets mode :data:`FILE_MODE` (0644: outputs are for other readers, PACS import and viewers) and is
flushed to disk before the rename, so after a crash or power loss ``path`` is the old file or the whole new one.
A process killed during a write leaves its temporary file behind; the next write of the same target removes such
files whose process is gone (:func:`remove_stale_temps`, or :func:`remove_stale_temps_in` for a whole folder).
A failed write is re-raised naming the target, and says "no space left on device" when the folder's disk is full
(``torch.save`` reports a full disk only as ``basic_ios::clear: iostream error``).

Standard library only, so that writing a data list, a report or a spool file imports nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "FILE_MODE", "NAME_MAX", "atomic_write", "copy_atomic", "remove_stale_temps", "remove_stale_temps_in",
    "temp_name", "write_json",
]

logger = logging.getLogger(__name__)

#: Below this many free bytes a failed write is reported as a full disk.
_FULL_DISK_BYTES = 1 << 20

#: The longest file name, in bytes, of common file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units).
NAME_MAX = 255

#: Mode of every file written atomically (rw-r--r--).
FILE_MODE = 0o644

#: Longest suffix part (``.nii.gz``, ``.png``, ``.pt``) kept in a hashed temporary name.
_MAX_SUFFIX_BYTES = 16

#: A temporary name: ``.tmp<pid>-<rest>``.
_TEMP = re.compile(r"\.tmp(\d+)-(.+)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _short_name(name: str) -> str:
    """A fixed-length stand-in for ``name``: 16 hex digits of its sha256 and its last suffixes (at most
    ``_MAX_SUFFIX_BYTES`` bytes, so writers that infer the format from the name still work)."""
    suffixes = Path(name).suffixes[-2:]
    while suffixes and len("".join(suffixes).encode()) > _MAX_SUFFIX_BYTES:
        suffixes = suffixes[1:]
    return hashlib.sha256(name.encode()).hexdigest()[:16] + "".join(suffixes)


def temp_name(path: str | os.PathLike, pid: int | None = None) -> str:
    """The temporary file name of a write of ``path``.

    Args:
        path: the target file.
        pid: the writing process, default this one.

    Returns:
        ``.tmp<pid>-<name>``, or ``.tmp<pid>-<hash><suffixes>`` when that would be longer than :data:`NAME_MAX`
        bytes.
    """
    name = Path(path).name
    prefix = f".tmp{os.getpid() if pid is None else pid}-"
    if len((prefix + name).encode()) > NAME_MAX:
        return prefix + _short_name(name)
    return prefix + name


def _remove_stale(folder: Path, rests: set[str] | None, subject: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` (those for a target name in ``rests`` only, when given) whose
    process no longer runs; a WARNING names each with ``subject``."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for candidate in sorted(folder.iterdir()):
        match = _TEMP.fullmatch(candidate.name)
        if not match or (rests is not None and match.group(2) not in rests) or not candidate.is_file():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
            logger.warning("removed %s, left by an interrupted write of %s", candidate, subject)
    return removed


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (:func:`temp_name`) of writes of ``path`` left by processes that no longer run.

    Args:
        path: the target file; only its folder is searched.

    Returns:
        The removed files.
    """
    path = Path(path)
    return _remove_stale(path.parent, {path.name, _short_name(path.name)}, path)


def remove_stale_temps_in(folder: str | os.PathLike) -> list[Path]:
    """Delete every temporary file (:func:`temp_name`) in ``folder`` left by a process that no longer runs, e.g. a
    spool folder at start-up.

    Args:
        folder: the folder to sweep (not its subfolders).

    Returns:
        The removed files.
    """
    folder = Path(folder)
    return _remove_stale(folder, None, folder)


def _root_os_error(err: BaseException) -> BaseException:
    """The innermost ``OSError`` in ``err``'s cause chain (writers such as MONAI's ``SaveImage`` wrap it in a
    ``RuntimeError`` whose message holds a whole traceback), else ``err``."""
    found, seen = err, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            found = err
        err = err.__cause__ or err.__context__
    return found


def _write_error(path: Path, err: BaseException) -> OSError:
    """An ``OSError`` naming ``path`` and, for a full disk, saying so, on one line."""
    err = _root_os_error(err)
    message = (str(err).strip().splitlines() or [""])[0]
    free = shutil.disk_usage(path.parent).free
    if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or free < _FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, f"cannot write {path}: no space left on device ({free} bytes free): {message}")
    code = err.errno if isinstance(err, OSError) else None
    return OSError(code, f"cannot write {path}: {type(err).__name__}: {message}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync ``tmp_path`` and move it onto ``path``: a crash leaves the old file or none,
    never half.

    The temporary name (:func:`temp_name`) keeps ``path``'s suffixes so writers that infer the format from the name
    still work, and fits in :data:`NAME_MAX` bytes whenever ``path``'s name does. The folder is created when
    missing; stale temporary files of earlier writes of ``path`` are removed first (:func:`remove_stale_temps`).

    Args:
        path: the target file.
        write: writes the whole content to the path it is given (e.g. ``lambda tmp: torch.save(obj, tmp)``).

    Returns:
        ``path``, with mode :data:`FILE_MODE`.

    Raises:
        OSError: naming ``path`` when the write fails (``errno.ENOSPC`` for a full disk); the temporary file is
            removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(temp_name(path))
    try:
        write(str(tmp))
        os.chmod(tmp, FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save raises RuntimeError for stream errors
        raise _write_error(path, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the file ``source`` to ``path`` in chunks (never whole in memory), atomically as :func:`atomic_write`.

    Args:
        source: the file to copy.
        path: the target file.

    Returns:
        ``path``.
    """
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as JSON (indent 2, a final newline) to ``path``, atomically as :func:`atomic_write`.

    Args:
        path: the target file.
        obj: anything :func:`json.dumps` accepts.

    Returns:
        ``path``.
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))
