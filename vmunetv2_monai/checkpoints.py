"""Checkpoint reading: ``torch.load(weights_only=True)`` with errors that name the file and what is wrong with it.

:func:`read_checkpoint` reads any checkpoint (a state dict, a training state), :func:`load_state_dict` a network's
weights, and :func:`find_non_finite` names the tensors of a checkpoint that hold NaN or Inf. Before ``torch.load``
reads a file, :func:`check_checkpoint_path` refuses a missing or empty file, and :func:`check_checkpoint_file`
refuses, naming the file and what it is:

- a git-LFS pointer (a clone without ``git lfs pull``: a small text file in place of the weights);
- a TorchScript archive (``torch.jit.save``): it holds code, not a state dict;
- a zip archive whose members would expand past :func:`expansion_limit` (a "zip bomb": ``torch.load`` allocates
  each member's uncompressed size). ``torch.save`` stores members uncompressed, so a real checkpoint expands to
  about its own size.

:func:`unpickling_reason` turns ``torch.load(weights_only=True)``'s refusal into a reason that does not advise
``weights_only=False`` (which would run code from the file).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .bundle.weights import check_bundle_weights

__all__ = [
    "EXPANSION_FACTOR", "EXPANSION_SLACK_BYTES", "check_checkpoint_file", "check_checkpoint_path", "expansion_limit",
    "find_non_finite", "load_state_dict", "read_checkpoint", "unpickling_reason",
]

logger = logging.getLogger(__name__)

#: A checkpoint's zip members may add up to this many times the file's size ...
EXPANSION_FACTOR = 4
#: ... plus this many bytes, uncompressed.
EXPANSION_SLACK_BYTES = 64 << 20

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def expansion_limit(file_size: int) -> int:
    """The most bytes a checkpoint of ``file_size`` bytes may expand to: ``EXPANSION_FACTOR * file_size +
    EXPANSION_SLACK_BYTES``.

    Args:
        file_size: the checkpoint file's size in bytes.

    Returns:
        The largest allowed total uncompressed size of the file's zip members, in bytes.
    """
    return EXPANSION_FACTOR * file_size + EXPANSION_SLACK_BYTES


def check_checkpoint_file(path: str | Path, what: str = "checkpoint") -> None:
    """Raise a ``ValueError`` naming ``path`` (``what`` names its role) when it is a git-LFS pointer, a TorchScript
    archive or a zip archive that would expand past :func:`expansion_limit`. Reads only the file's first bytes and
    its zip directory.

    Args:
        path: the checkpoint file.
        what: the file's role in the messages (``"checkpoint"``, ``"training state"``).

    Raises:
        ValueError: a git-LFS pointer, a TorchScript archive or a zip archive that would expand too far.
    """
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
    the inputs are read (``inference.json``'s ``initialize``) so a bad checkpoint stops the run at once.

    Args:
        path: the checkpoint file.
        what: the file's role in the messages (``"checkpoint"``, ``"training state"``).

    Returns:
        True when the file passes.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is empty or :func:`check_checkpoint_file` refuses it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes): an interrupted copy or download?")
    check_checkpoint_file(path, what)
    return True


def unpickling_reason(message: str) -> str:
    """The reason in ``torch.load(weights_only=True)``'s refusal ``message``, without torch's advice.

    Args:
        message: the text of the ``pickle.UnpicklingError`` that ``torch.load(weights_only=True)`` raised.

    Returns:
        A one-line reason for an error message (never advising ``weights_only=False``).
    """
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", message, re.DOTALL)
    detail = " ".join(found.group(1).split()) if found else "unreadable pickle data"
    if detail.startswith("Unsupported global"):
        return (f"it holds pickled Python objects besides tensors ({detail}), which could run code when loaded: "
                "save the state dict alone (torch.save(model.state_dict(), ...))")
    return f"unreadable pickle data ({detail})"


def find_non_finite(obj: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) checkpoint that hold NaN or Inf.

    Args:
        obj: a tensor, or mappings, lists and tuples holding tensors (a state dict, a training state).
        prefix: the name of ``obj`` itself; nested names join keys with ``.``.

    Returns:
        The dotted names (``"model.encoder.patch_embed.proj.weight"``), ``"<tensor>"`` for a bare tensor.
    """
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        return [prefix or "<tensor>"] if bad else []
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [name for key, value in items for name in find_non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def read_checkpoint(
    path: str | Path, map_location: str | torch.device | None = "cpu", check_finite: bool = True,
    what: str = "checkpoint",
) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong with it.

    A bundle's own weights (``models/model.pt``) are compared with its ``large_files.yml`` first
    (:func:`~vmunetv2_monai.bundle.weights.check_bundle_weights`: a WARNING on a mismatch).

    Args:
        path: the checkpoint file.
        map_location: ``torch.load``'s ``map_location``.
        check_finite: refuse a checkpoint with a floating-point tensor holding NaN or Inf.
        what: the file's role in the messages (``"checkpoint"``, ``"training state"``).

    Returns:
        What ``torch.load`` gives: tensors in (nested) dicts, lists and tuples.

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an empty or unreadable file (not a PyTorch checkpoint, one holding pickled objects, a git-LFS
            pointer, a TorchScript archive or a zip archive that would expand past a bound, see
            :func:`check_checkpoint_file`) and, with ``check_finite``, tensors holding NaN or Inf.
    """
    path = Path(path)
    check_checkpoint_path(path, what)
    check_bundle_weights(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which would run code from the file: kept at DEBUG only
        logger.debug("torch.load(%s, weights_only=True) refused the file", path, exc_info=err)
        raise ValueError(f"cannot read {what} {path}: not a PyTorch weights file: "
                         f"{unpickling_reason(str(err))}") from None
    except Exception as err:  # torch.load raises many types for foreign files (IndexError, EOFError, ...)
        raise ValueError(f"cannot read {what} {path}: not a PyTorch weights file ({type(err).__name__}: "
                         f"{str(err)[:300]})") from err
    bad = find_non_finite(obj) if check_finite else []
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"{what} {path}: {len(bad)} tensor(s) hold NaN or Inf ({shown}); it comes from a "
                         "diverged training run and cannot be used")
    return obj


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A network's weights read with :func:`read_checkpoint`.

    Args:
        path: a raw state dict or ``{"state_dict"|"model": state dict, ...}`` saved with ``torch.save``.

    Returns:
        Parameter and buffer name -> tensor (on the CPU).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint`; ``ValueError`` also when the file holds no
            state dict.
    """
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)
