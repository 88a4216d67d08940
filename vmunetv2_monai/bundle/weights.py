"""The bundle's own weight files checked against its ``large_files.yml`` when they are read.

A file that a bundle lists in ``large_files.yml`` (``models/model.pt``) and that no longer has the listed hash is
not the shipped model: a training run into the bundle folder replaced it, it was edited, or a copy or download
was damaged. Results then differ from the model card, so the mismatch is logged as a WARNING naming the file and
both hashes. Each file is hashed once per process (again only when its size or modification time changes).

Training does not write into the folder of a listed file (the bundle's shipped ``models/``) unless asked to:
:func:`check_training_folder`, the first step of train.json's ``run``, refuses such a ``ckpt_dir`` before any
training (``initialize`` passes, so ``monai.bundle.load(workflow_type="train")`` still gives the network), except
with ``overwrite_shipped_model`` true or when the run fine-tunes a model of that folder in place through a network
``CheckpointLoader`` in ``train#handlers`` (what MONAI Label's stock ``/train`` adds).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from monai.bundle import ConfigParser

__all__ = [
    "LARGE_FILES_NAMES", "ShippedModelError", "check_bundle_weights", "check_training_folder", "listed_files",
    "listed_hash",
]

logger = logging.getLogger(__name__)

#: Names of a bundle's large-file list, as ``monai.bundle.download_large_files`` looks for them.
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")

_CHUNK = 1 << 20
#: (resolved path, mtime_ns, size) -> result of :func:`check_bundle_weights`.
_CHECKED: dict[tuple[str, int, int], bool | None] = {}


class ShippedModelError(ValueError):
    """A training run would write into the folder of the bundle's shipped model without being asked to."""


def _large_files_list(start: Path, subject: Path) -> tuple[Path, Path, list] | None:
    """``(bundle root, large-file list, its entries)`` of the nearest folder from ``start`` upwards that holds a
    large-file list; None when there is none. An unreadable list is logged as a WARNING naming it and ``subject``
    (the file or folder to check) and gives None."""
    for root in (start, *start.parents):
        found = [root / name for name in LARGE_FILES_NAMES if (root / name).is_file()]
        if not found:
            continue
        try:
            entries = ConfigParser.load_config_file(str(found[0])).get("large_files", [])
        except (OSError, ValueError, yaml.YAMLError) as err:
            logger.warning("cannot read %s (%s: %s): %s is not checked against it", found[0], type(err).__name__,
                           err, subject)
            return None
        return root, found[0], entries if isinstance(entries, list) else []
    return None


def listed_files(folder: str | os.PathLike) -> tuple[Path, list[Path]]:
    """``(large-file list, the files it lists that lie directly in folder)`` for the nearest large-file list above
    ``folder`` (a bundle's ``models/`` gives ``large_files.yml`` and ``[models/model.pt]``); an empty list when
    ``folder`` holds none of them or no list is found (then the list path is ``folder``).

    Args:
        folder: the folder to look up (resolved; the search for a large-file list starts there and goes upwards).

    Returns:
        ``(large-file list path, listed files that lie directly in folder)``.
    """
    target = Path(folder).resolve()
    found = _large_files_list(target, target)
    if found is None:
        return target, []
    root, list_file, entries = found
    files = [(root / e["path"]).resolve() for e in entries if isinstance(e, dict) and e.get("path")]
    return list_file, [f for f in files if f.parent == target]


def _network_loader_paths(handlers_id: str) -> list[Path]:
    """Files that the network ``CheckpointLoader`` entries of the raw (unparsed) ``handlers_id`` list of the config
    being evaluated load (MONAI Label's stock ``/train`` inserts one for ``models/<model_filename>``); read without
    instantiating the handlers, which would already create their output folders."""
    from .checks import running_parser

    parser = running_parser()
    if parser is None:
        return []
    raw = parser.get(handlers_id, [])
    paths = []
    for i, handler in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(handler, Mapping) or not str(handler.get("_target_", "")).endswith("CheckpointLoader"):
            continue
        if not isinstance(handler.get("load_dict"), Mapping) or "model" not in handler["load_dict"]:
            continue
        path = handler.get("load_path")
        if isinstance(path, str) and path.startswith(("$", "@")):
            path = parser.get_parsed_content(f"{handlers_id}#{i}#load_path")
        if path:
            paths.append(Path(path).resolve())
    return paths


def check_training_folder(ckpt_dir: str | os.PathLike, overwrite_shipped_model: bool,
                          handlers_id: str = "train#handlers") -> bool:
    """Refuse a training run whose ``ckpt_dir`` is the folder of a file the bundle's ``large_files.yml`` lists
    (``models/``, where the shipped ``model.pt`` lies), before the trainer runs: raise a
    :class:`ShippedModelError` naming the folder, the listed files and the two ways to go on.

    Allowed with ``overwrite_shipped_model`` True (logged at WARNING), or when a network ``CheckpointLoader`` in
    ``handlers_id`` loads a file of that folder: fine-tuning the bundle's model in place, which is what MONAI
    Label's stock ``monaibundle`` ``/train`` does (logged). Either way ``train#keep_better`` replaces ``model.pt``
    only by a model that scores at least as well on the validation images. Any other folder passes.

    Args:
        ckpt_dir: the folder the training run writes its checkpoints to.
        overwrite_shipped_model: allow training into the shipped model's folder (must be a ``bool``).
        handlers_id: config id of the raw train handler list searched for a network ``CheckpointLoader``.

    Returns:
        True when the run may go on (for use in a config expression).

    Raises:
        TypeError: when ``overwrite_shipped_model`` is not a ``bool``.
        ShippedModelError: when ``ckpt_dir`` holds a listed file and neither exception above applies.
    """
    if not isinstance(overwrite_shipped_model, bool):
        raise TypeError(f"bad value {overwrite_shipped_model!r} for 'overwrite_shipped_model': expected True or "
                         "False")
    folder = Path(ckpt_dir).resolve()
    list_file, shipped = listed_files(folder)
    if not shipped:
        return True
    names = ", ".join(f.name for f in shipped)
    if overwrite_shipped_model:
        logger.warning("training into the bundle's shipped model folder %s (overwrite_shipped_model True): %s is "
                       "replaced by a new model that scores at least as well on the validation images", folder, names)
        return True
    in_place = [p for p in _network_loader_paths(handlers_id) if p.parent == folder]
    if in_place:
        logger.info("fine-tuning %s in place (a network CheckpointLoader in %s loads it, as MONAI Label's /train "
                    "adds): %s is replaced only by a model that scores at least as well on the validation images",
                    in_place[0], handlers_id, names)
        return True
    raise ShippedModelError(
        f"training would write into the bundle's shipped model folder {folder} ({names} listed in {list_file}), "
        "which every default inference, evaluation, DICOM, MONAI Label and Deploy run uses: give the run its own "
        "folder with --output_dir runs/<name> (the model goes to <output_dir>/models/model.pt), or pass "
        "--overwrite_shipped_model True to train into it on purpose")


def listed_hash(path: str | os.PathLike) -> tuple[Path, str, str] | None:
    """``(large-file list, hash type, hash value)`` for ``path`` when the nearest folder above it that holds a
    large-file list (the bundle root) lists it with a hash; None otherwise. An unreadable list is logged as a
    WARNING naming it and gives None.

    Args:
        path: the file to look up.

    Returns:
        ``(large-file list path, lower-case hash type (md5 when not given), lower-case hash value)``, or None.
    """
    target = Path(path).resolve()
    found = _large_files_list(target.parent, target)
    if found is None:
        return None
    root, list_file, entries = found
    for entry in entries:
        if isinstance(entry, dict) and entry.get("path") and (root / entry["path"]).resolve() == target:
            value = str(entry.get("hash_val") or "").lower()
            return (list_file, str(entry.get("hash_type") or "md5").lower(), value) if value else None
    return None


def check_bundle_weights(path: str | os.PathLike) -> bool | None:
    """Compare a bundle's large file (e.g. ``models/model.pt``) with the hash its ``large_files.yml`` lists.

    Returns True when they match, False when they differ (a WARNING names the file and both hashes), None when
    ``path`` is not a listed large file of a bundle (a training output, any other checkpoint) or cannot be
    checked. Cached per process by path, size and modification time, so a file is hashed once.

    Args:
        path: the file to check (e.g. a bundle's ``models/model.pt``).

    Returns:
        True (hash matches), False (hash differs) or None (not a listed large file, or not checkable).
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
