"""Checkpoint lineage: the MLflow run and the config that produced a checkpoint, in a JSON sidecar beside it.

``models/model.pt`` stays a raw state dict (MONAI's stock loaders read it with ``torch.load(weights_only=True)``),
so the lineage goes to ``<checkpoint>.json`` (``model.pt.json``, ``latest.pt.json``). The sidecar holds the
checkpoint's sha256: a sidecar that does not match the file beside it (the checkpoint was replaced, edited or
copied without it) is not trusted, and the checkpoint's lineage is unknown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import write_json

__all__ = ["LINEAGE_FIELDS", "STATE_ATTR", "config_hash", "file_sha256", "read_lineage", "sidecar_path",
           "write_lineage"]

logger = logging.getLogger(__name__)

#: ``engine.state`` attribute where a tracker puts the lineage that checkpoint savers of that engine record.
STATE_ATTR = "lineage"

#: Lineage fields a sidecar always has (``None`` when the run was not tracked).
LINEAGE_FIELDS = ("mlflow_run_id", "mlflow_run_name", "mlflow_experiment_id", "mlflow_tracking_uri", "config_hash")

#: Keys of an executed config that differ between runs of the same settings (left out of the config hash).
_VOLATILE_KEYS = ("save_execute_config",)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The lineage sidecar of a checkpoint.

    Args:
        path: the checkpoint file.

    Returns:
        ``<path>.json``.
    """
    return Path(f"{os.fspath(path)}.json")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes.

    Args:
        path: the file.

    Returns:
        The digest as hex.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_hash(config_file: str | os.PathLike | None) -> str | None:
    """sha256 of the executed, merged config that ``monai.bundle run --tracking`` writes (``config_<time>.json``),
    with sorted keys and without ``save_execute_config`` (its own time-stamped name).

    Args:
        config_file: the executed config (JSON), or None.

    Returns:
        The digest as hex, or None without a file.
    """
    if not config_file:
        return None
    config = json.loads(Path(config_file).read_text())
    for key in _VOLATILE_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_lineage(path: str | os.PathLike, lineage: Mapping[str, Any] | None, epoch: int | None = None) -> Path:
    """Write a checkpoint's sidecar (atomically): its sha256, the lineage, the epoch and the time.

    Args:
        path: the checkpoint file, already written.
        lineage: the :data:`LINEAGE_FIELDS` (``None`` where missing); None for an untracked run.
        epoch: the epoch the checkpoint was saved at, if known.

    Returns:
        The sidecar's path (:func:`sidecar_path`).
    """
    lineage = dict(lineage or {})
    record = {
        "checkpoint": os.path.basename(path),
        "sha256": file_sha256(path),
        **{field: lineage.get(field) for field in LINEAGE_FIELDS},
        "epoch": epoch,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target = sidecar_path(path)
    return write_json(target, record)


def read_lineage(path: str | os.PathLike) -> dict[str, Any] | None:
    """The lineage recorded beside a checkpoint.

    Args:
        path: the checkpoint file.

    Returns:
        The sidecar's record, or None when the lineage is unknown: no sidecar, no checkpoint, an unreadable sidecar
        or one whose sha256 is not the checkpoint's (each but the first is logged at WARNING).
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    if not os.path.isfile(path):
        logger.warning("lineage: %s has no checkpoint %s beside it", sidecar, path)
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("lineage: %s is unreadable (%s): lineage of %s unknown", sidecar, err, path)
        return None
    if not isinstance(record, dict) or record.get("sha256") != file_sha256(path):
        logger.warning("lineage: %s does not match %s (replaced or edited after it was saved): lineage unknown",
                       sidecar, path)
        return None
    return record
