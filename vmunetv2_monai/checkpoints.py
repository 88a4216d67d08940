"""What a file given as a checkpoint is, found before ``torch.load`` reads it.

:func:`check_checkpoint_path` refuses a missing or empty file, and :func:`check_checkpoint_file` refuses, naming the
file and what it is:

- a git-LFS pointer (a clone without ``git lfs pull``: a small text file in place of the weights);
- a TorchScript archive (``torch.jit.save``): it holds code, not a state dict;
- a zip archive whose members would expand past :func:`expansion_limit` (a "zip bomb": ``torch.load`` allocates
  each member's uncompressed size). ``torch.save`` stores members uncompressed, so a real checkpoint expands to
  about its own size.

:func:`unpickling_reason` turns ``torch.load(weights_only=True)``'s refusal into a reason that does not advise
``weights_only=False`` (which would run code from the file).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

__all__ = ["EXPANSION_FACTOR", "EXPANSION_SLACK_BYTES", "check_checkpoint_file", "check_checkpoint_path",
           "expansion_limit", "unpickling_reason"]

#: A checkpoint's zip members may add up to this many times the file's size ...
EXPANSION_FACTOR = 4
#: ... plus this many bytes, uncompressed.
EXPANSION_SLACK_BYTES = 64 << 20

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def expansion_limit(file_size: int) -> int:
    """The most bytes a checkpoint of ``file_size`` bytes may expand to: ``EXPANSION_FACTOR * file_size +
    EXPANSION_SLACK_BYTES``."""
    return EXPANSION_FACTOR * file_size + EXPANSION_SLACK_BYTES


def check_checkpoint_file(path: str | Path, what: str = "checkpoint") -> None:
    """Raise a ``ValueError`` naming ``path`` (``what`` names its role) when it is a git-LFS pointer, a TorchScript
    archive or a zip archive that would expand past :func:`expansion_limit`. Reads only the file's first bytes and
    its zip directory."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        raise ValueError(f"{what} {path} is a git-LFS pointer file ({path.stat().st_size} bytes), not the weights: "
                         "fetch the real file (git lfs pull, or download it) and try again")
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    if any(m.filename == "constants.pkl" or m.filename.endswith("/constants.pkl") for m in members):
        raise ValueError(f"{what} {path} is a TorchScript archive (torch.jit.save), which holds code and not a state "
                         "dict: give the state dict file (torch.save(model.state_dict(), ...)) instead")
    size, expanded = path.stat().st_size, sum(m.file_size for m in members)
    if expanded > expansion_limit(size):
        raise ValueError(f"{what} {path} would expand from {size} bytes to {expanded} bytes, past the limit of "
                         f"{EXPANSION_FACTOR} x its size + {EXPANSION_SLACK_BYTES >> 20} MiB "
                         f"({expansion_limit(size)} bytes): refused unread (torch.save does not compress, so this "
                         "is not a checkpoint it wrote)")


def check_checkpoint_path(path: str | Path, what: str = "checkpoint") -> bool:
    """Raise naming ``path`` (``what`` names its role) when it is missing (``FileNotFoundError``), empty or a file
    :func:`check_checkpoint_file` refuses (``ValueError``); returns True, for config expressions. Cheap: run before
    the inputs are read (``inference.json``'s ``initialize``) so a bad checkpoint stops the run at once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): an interrupted copy or download?")
    check_checkpoint_file(path, what)
    return True


def unpickling_reason(message: str) -> str:
    """The reason in ``torch.load(weights_only=True)``'s refusal ``message``, without torch's advice."""
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", message, re.DOTALL)
    detail = " ".join(found.group(1).split()) if found else "unreadable pickle data"
    if detail.startswith("Unsupported global"):
        return (f"it holds pickled Python objects besides tensors ({detail}), which could run code when loaded: "
                "save the state dict alone (torch.save(model.state_dict(), ...))")
    return f"unreadable pickle data ({detail})"
