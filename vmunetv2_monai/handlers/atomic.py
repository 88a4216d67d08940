"""Atomic file writes: write a temporary file in the target folder, then ``os.replace`` it into place.

The temporary file is ``.tmp<pid>-<name>`` beside the target. A process killed during a write leaves it behind;
the next write of the same target removes such files whose process is gone. A failed write is re-raised naming
the target, and says "no space left on device" when the folder's disk is full (``torch.save`` reports a full
disk only as ``basic_ios::clear: iostream error``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "remove_stale_temps"]

logger = logging.getLogger(__name__)

#: Below this many free bytes a failed write is reported as a full disk.
_FULL_DISK_BYTES = 1 << 20


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete ``.tmp<pid>-<name>`` files beside ``path`` left by processes that no longer run; returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.tmp(\d+)-{re.escape(path.name)}")
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

    The temporary name keeps ``path``'s suffixes so writers that infer the format from the name still work.
    Raises ``OSError`` naming ``path`` when the write fails (``errno.ENOSPC`` for a full disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".tmp{os.getpid()}-{path.name}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save raises RuntimeError for stream errors
        raise _write_error(path, err) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
