"""The bundle's own weight files checked against its ``large_files.yml`` when they are read.

A file that a bundle lists in ``large_files.yml`` (``models/model.pt``) and that no longer has the listed hash is
not the shipped model: a training run into the bundle folder replaced it, it was edited, or a copy or download
was damaged. Results then differ from the model card, so the mismatch is logged as a WARNING naming the file and
both hashes. Each file is hashed once per process (again only when its size or modification time changes).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import yaml
from monai.bundle import ConfigParser

__all__ = ["LARGE_FILES_NAMES", "check_bundle_weights", "listed_hash"]

logger = logging.getLogger(__name__)

#: Names of a bundle's large-file list, as ``monai.bundle.download_large_files`` looks for them.
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")

_CHUNK = 1 << 20
#: (resolved path, mtime_ns, size) -> result of :func:`check_bundle_weights`.
_CHECKED: dict[tuple[str, int, int], bool | None] = {}


def listed_hash(path: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``(large-file list, hash type, hash value)`` for ``path`` when the nearest folder above it that holds a
    large-file list (the bundle root) lists it with a hash; None otherwise. An unreadable list is logged as a
    WARNING naming it and gives None."""
    target = Path(path).resolve()
    for root in target.parents:
        found = [root / name for name in LARGE_FILES_NAMES if (root / name).is_file()]
        if not found:
            continue
        try:
            entries = ConfigParser.load_config_file(str(found[0])).get("large_files", [])
        except (OSError, ValueError, yaml.YAMLError) as err:
            logger.warning("cannot read %s (%s: %s): %s is not checked against it", found[0], type(err).__name__,
                           err, target)
            return None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("path") and (root / entry["path"]).resolve() == target:
                value = str(entry.get("hash_val") or "").lower()
                return (found[0], str(entry.get("hash_type") or "md5").lower(), value) if value else None
        return None
    return None


def check_bundle_weights(path: str | os.PathLike) -> bool | None:
    """Compare a bundle's large file (e.g. ``models/model.pt``) with the hash its ``large_files.yml`` lists.

    Returns True when they match, False when they differ (a WARNING names the file and both hashes), None when
    ``path`` is not a listed large file of a bundle (a training output, any other checkpoint) or cannot be
    checked. Cached per process by path, size and modification time, so a file is hashed once.
    """
    target = Path(path).resolve()
    if not target.is_file():
        return None
    stat = target.stat()
    key = (str(target), stat.st_mtime_ns, stat.st_size)
    if key in _CHECKED:
        return _CHECKED[key]
    listed = listed_hash(target)
    result: bool | None = None
    if listed is not None:
        list_file, hash_type, expected = listed
        if hash_type not in hashlib.algorithms_available:
            logger.warning("%s lists %s with unknown hash type %r: the file is not checked", list_file, target,
                           hash_type)
        else:
            digest = hashlib.new(hash_type)
            with open(target, "rb") as fp:
                for chunk in iter(lambda: fp.read(_CHUNK), b""):
                    digest.update(chunk)
            result = digest.hexdigest() == expected
            if result:
                logger.debug("%s matches its %s %s in %s", target, hash_type, expected, list_file)
            else:
                logger.warning(
                    "%s is not the bundle's shipped file: its %s is %s, %s lists %s (replaced by a training run "
                    "into the bundle folder, edited, or a damaged copy?); results will differ from the model card",
                    target, hash_type, digest.hexdigest(), list_file, expected)
    _CHECKED[key] = result
    return result
