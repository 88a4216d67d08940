"""Atomic file writes: write a temporary file in the target folder, then ``os.replace`` it into place.

The temporary file is ``.tmp<pid>-<name>`` beside the target, or ``.tmp<pid>-<hash><suffixes>`` (a fixed-length
hash of the name) when that would pass :data:`NAME_MAX` bytes, so a long target name still gets a temporary name
the file system accepts. A process killed during a write leaves it behind; the next write of the same target
removes such files whose process is gone. A failed write is re-raised naming
the target, and says "no space left on device" when the folder's disk is full (``torch.save`` reports a full
disk only as ``basic_ios::clear: iostream error``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["NAME_MAX", "atomic_write", "remove_stale_temps", "temp_name"]

logger = logging.getLogger(__name__)

#: Below this many free bytes a failed write is reported as a full disk.
_FULL_DISK_BYTES = 1 << 20

#: The longest file name, in bytes, of common file systems (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units).
NAME_MAX = 255

#: Longest suffix part (``.nii.gz``, ``.png``, ``.pt``) kept in a hashed temporary name.
_MAX_SUFFIX_BYTES = 16


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
    """The temporary file name of a write of ``path`` by process ``pid`` (this one by default): ``.tmp<pid>-<name>``,
    or ``.tmp<pid>-<hash><suffixes>`` when that would be longer than :data:`NAME_MAX` bytes."""
    name = Path(path).name
    prefix = f".tmp{os.getpid() if pid is None else pid}-"
    if len((prefix + name).encode()) > NAME_MAX:
        return prefix + _short_name(name)
    return prefix + name


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files (:func:`temp_name`) beside ``path`` left by processes that no longer run; returns
    them."""
    path = Path(path)
    names = "|".join(re.escape(n) for n in (path.name, _short_name(path.name)))
    pattern = re.compile(rf"\.tmp(\d+)-(?:{names})")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
            logger.warning("removed %s, left by an interrupted write of %s", candidate, path)
    return removed


def _write_error(path: Path, err: BaseException) -> OSError:
    """An ``OSError`` naming ``path`` and, for a full disk, saying so."""
    free = shutil.disk_usage(path.parent).free
    if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or free < _FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, f"cannot write {path}: no space left on device ({free} bytes free): {err}")
    code = err.errno if isinstance(err, OSError) else None
    return OSError(code, f"cannot write {path}: {type(err).__name__}: {err}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move ``tmp_path`` onto ``path``; a crash leaves the old file or none, never half.

    The temporary name (:func:`temp_name`) keeps ``path``'s suffixes so writers that infer the format from the name
    still work, and fits in :data:`NAME_MAX` bytes whenever ``path``'s name does.
    Raises ``OSError`` naming ``path`` when the write fails (``errno.ENOSPC`` for a full disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(temp_name(path))
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save raises RuntimeError for stream errors
        raise _write_error(path, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
