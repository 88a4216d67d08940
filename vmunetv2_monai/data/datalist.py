"""Data lists for 2D segmentation folders: pairs matched by file stem, checked, split with a seed.

Supported layouts (``layout="auto"`` detects them in this order):

- ``pranet``: ``TrainDataset/images|masks`` and ``TestDataset/<set>/images|masks`` (PraNet / U-Net v2 polyp layout).
- ``split``: ``train/images|masks`` with ``val/`` and/or ``test/`` beside it (ISIC as used by VM-UNet, and the
  shared Kvasir-SEG copy). When only ``val/`` exists it is the *test* set (that is how the paper uses ISIC's
  ``val/``); when both exist ``val/`` is validation and ``test/`` is test.
- ``flat``: ``images/`` and ``masks/`` with the same names (Kvasir-SEG as released).

Every item is ``{"image": path, "label": path, "name": stem, "set": set_name}``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..files import write_json
from .transforms import TIFF_SUFFIXES, check_tiff

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "DataListError",
    "build_datalist",
    "detect_layout",
    "exif_orientation",
    "find_pairs",
    "image_size",
    "image_stem",
    "list_images",
    "load_splits",
    "read_names",
    "require_items",
    "require_lesion",
    "save_datalist",
    "warn_exif_orientation",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
"""File name suffixes read as images (matched case-insensitively)."""
SPLITS = ("training", "validation", "test")
"""The lists of a data list, as :func:`build_datalist` returns and :func:`save_datalist` writes them."""


class DataListError(ValueError):
    """A dataset folder or data list that cannot be used; the message names the file or folder."""


def image_stem(path: Path) -> str:
    """``path``'s file name without its image suffix (``.nii.gz`` as a whole; another suffix as ``Path.stem``).

    Args:
        path: an image file path.

    Returns:
        The stem that pairs images with masks.
    """
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def _by_stem(folder: Path, broken: list[str] | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by stem. A link whose target is missing or loops is an error, or with ``broken``
    is added to it (``"path: reason"``) and left out."""
    if not folder.is_dir():
        raise DataListError(f"folder not found: {folder}")
    files: dict[str, Path] = {}
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.exists():
            reason = (f"broken link {path} -> {os.readlink(path)} (its target is missing or a link loop): remove it "
                      "or fix its target")
            if broken is None:
                raise DataListError(reason)
            broken.append(f"{path}: {reason}")
            logger.error("skipped %s", reason)
            continue
        if not _is_image(path):
            if not path.name.startswith(".") and not path.is_dir():
                skipped.append(path.name)
            continue
        stem = image_stem(path)
        if stem in files:
            raise DataListError(f"two files with the name '{stem}' in {folder}: {files[stem].name} and {path.name}")
        files[stem] = path
    if skipped:
        logger.warning("%s: %d file(s) without an image suffix skipped: %s", folder, len(skipped),
                       ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    if not files:
        links = f" ({len(broken)} broken link(s): {', '.join(broken)})" if broken else ""
        raise DataListError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}{links}")
    return files


#: EXIF tag of a photo's orientation (1 = as stored; 2-8 = mirrored and/or rotated for display).
_EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF Orientation of a PNG or JPEG file. The bundle reads pixels as stored and does not apply it, as
    MONAI's and ITK's readers do not.

    Args:
        path: an image file.

    Returns:
        The orientation, 1 to 8 (1 when the file has none, and for formats other than PNG and JPEG).
    """
    if not os.fspath(path).lower().endswith((".png", ".jpg", ".jpeg")):
        return 1
    from PIL import Image

    with Image.open(path) as img:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))


def warn_exif_orientation(path: str | os.PathLike) -> int:
    """Log a WARNING naming ``path`` when it has an EXIF Orientation other than 1 (which is not applied).

    Args:
        path: an image file.

    Returns:
        The orientation (see :func:`exif_orientation`).
    """
    value = exif_orientation(path)
    if value != 1:
        logger.warning("%s has EXIF Orientation %d: it is read as stored, without the rotation or mirroring a photo "
                       "viewer applies (save it with the orientation applied, e.g. PIL.ImageOps.exif_transpose, to "
                       "segment what a viewer shows)", path, value)
    return value


def image_size(path: str | os.PathLike) -> tuple[int, ...]:
    """Spatial size of an image file; PNG/JPEG/BMP are decoded in full, TIFFs checked by
    :func:`~vmunetv2_monai.data.transforms.check_tiff`.

    Args:
        path: an image file.

    Returns:
        The first two dimensions (``(W, H)`` for PIL formats, as PIL's ``size``).

    Raises:
        DataListError: naming a file that cannot be read (missing, truncated, corrupt, a multi-page TIFF).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        try:
            check_tiff(path)
        except ValueError as err:
            raise DataListError(str(err)) from err
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape
            return tuple(int(s) for s in shape[:2])
        if name.endswith((".nrrd", ".mha", ".mhd")):
            import itk

            reader = itk.ImageFileReader.New(FileName=str(path))
            reader.UpdateOutputInformation()
            region = reader.GetOutput().GetLargestPossibleRegion().GetSize()
            return tuple(int(region[i]) for i in range(2))
        from PIL import Image

        with Image.open(path) as img:
            img.load()  # decodes every byte: truncated or corrupt files fail here, not in epoch 1
            return tuple(int(s) for s in img.size)
    except Exception as err:
        raise DataListError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err


def find_pairs(
    image_dir: str | os.PathLike, mask_dir: str | os.PathLike, set_name: str = "", check: bool = True
) -> list[dict]:
    """Pair ``image_dir`` and ``mask_dir`` files by stem; every unmatched, unreadable or size-mismatched file is an
    error.

    Args:
        image_dir: folder of images.
        mask_dir: folder of masks with the same stems (any supported suffix).
        set_name: value stored under ``"set"`` in every item. Defaults to ``""``.
        check: read every file to check it opens and that image and mask sizes agree. Defaults to True.

    Returns:
        Items ``{"image", "label", "name", "set"}``, sorted by stem.

    Raises:
        DataListError: listing every problem (at most 20 shown): a missing folder or one without images, an
            unmatched, unreadable or size-mismatched file, two files with one stem, a broken link.
    """
    images, masks = _by_stem(Path(image_dir)), _by_stem(Path(mask_dir))
    problems = [f"image without mask: {images[s]}" for s in sorted(set(images) - set(masks))]
    problems += [f"mask without image: {masks[s]}" for s in sorted(set(masks) - set(images))]
    items = []
    for stem in sorted(set(images) & set(masks)):
        item = {"image": str(images[stem]), "label": str(masks[stem]), "name": stem, "set": set_name}
        if check:
            try:
                img_size, mask_size = image_size(images[stem]), image_size(masks[stem])
            except DataListError as err:
                problems.append(str(err))
                continue
            orientations = {p: warn_exif_orientation(p) for p in (images[stem], masks[stem])}
            if img_size != mask_size:
                rotated = [f"{p.name} has EXIF Orientation {o}" for p, o in orientations.items() if o != 1]
                hint = (f" ({' and '.join(rotated)}, which is not applied: pixels are read as stored; save the "
                        "files with the orientation applied, e.g. PIL.ImageOps.exif_transpose)") if rotated else ""
                problems.append(f"image and mask sizes differ for '{stem}': {images[stem]} is {img_size}, "
                                f"{masks[stem]} is {mask_size}{hint}")
                continue
        items.append(item)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataListError(f"{len(problems)} problem(s) in {image_dir} / {mask_dir}:\n  {shown}")
    return items


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder (see the module docstring).

    Args:
        root: the dataset folder.

    Returns:
        ``"pranet"``, ``"split"`` or ``"flat"``.

    Raises:
        DataListError: naming ``root`` and the folders expected when none is found.
    """
    if (root / "TrainDataset").is_dir():
        return "pranet"
    if (root / "train" / "images").is_dir():
        return "split"
    if (root / "images").is_dir():
        return "flat"
    raise DataListError(
        f"unrecognised dataset layout in {root}: expected TrainDataset/ (PraNet), train/images (ISIC-style) "
        "or images/ + masks/ (Kvasir-SEG)"
    )


def read_names(path: str | os.PathLike) -> list[str]:
    """Read one file stem per line (blank lines and ``#`` comments ignored; suffixes are stripped; a UTF-8 byte
    order mark, as Windows editors write, is dropped).

    Args:
        path: the split file (e.g. the PraNet Kvasir test ids).

    Returns:
        The stems, in file order.

    Raises:
        DataListError: when the file does not exist or lists no names.
    """
    path = Path(path)
    if not path.is_file():
        raise DataListError(f"split file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [image_stem(Path(ln)) for ln in lines if ln and not ln.startswith("#")]
    if not names:
        raise DataListError(f"split file {path} lists no names")
    return names


def _split_off(items: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split: returns (rest, held_out) with ``round(fraction * n)`` items held out (at least 1 if
    fraction > 0)."""
    if not 0.0 <= fraction < 1.0:
        raise DataListError(f"a split fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(items), []
    n_out = max(1, round(fraction * len(items)))
    if n_out >= len(items):
        raise DataListError(f"cannot hold out {n_out} of {len(items)} items (fraction {fraction}): too few items")
    order = sorted(range(len(items)), key=lambda i: items[i]["name"])
    random.Random(seed).shuffle(order)
    held = set(order[:n_out])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def build_datalist(
    dataset_dir: str | os.PathLike,
    layout: str = "auto",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    test_names_file: str | os.PathLike | None = None,
    val_is_test: bool = False,
    check: bool = True,
) -> dict[str, list[dict]]:
    """Build ``{"training", "validation", "test"}`` lists from a dataset folder.

    Args:
        dataset_dir: dataset root (see the module docstring for layouts).
        layout: ``"auto"``, ``"pranet"``, ``"split"``/``"isic"`` or ``"flat"``/``"kvasir"``.
        val_fraction: fraction of the training pool held out (seeded) for validation, unless the layout has ``val/``
            beside ``test/``.
        test_fraction: fraction held out (seeded) as a test set when the layout has none and no split file is given.
        seed: seed of the held-out draws (the draw is independent of file-system order).
        test_names_file: file of stems that form the test set (e.g. the PraNet Kvasir test ids); all pairs of every
            folder of the layout are pooled first, listed names become ``test``, the rest is training (+ validation).
        val_is_test: the paper's protocol: validation *is* the test set. Off by default.
        check: read every file (unreadable files and size mismatches are errors).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` of items as :func:`find_pairs` makes them.

    Raises:
        DataListError: for a missing folder, an unknown layout, a problem of :func:`find_pairs`, names of
            ``test_names_file`` not in the folder, ``val_is_test`` without a test set, a bad fraction, or no
            training pairs left.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DataListError(f"dataset folder not found: {root}")
    layout = {"isic": "split", "kvasir": "flat"}.get(layout, layout)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in ("pranet", "split", "flat"):
        raise DataListError(f"unknown layout {layout!r}: use auto, pranet, split (isic) or flat (kvasir)")

    validation: list[dict] = []
    if layout == "pranet":
        pool = find_pairs(root / "TrainDataset" / "images", root / "TrainDataset" / "masks", "train", check)
        test_root = root / "TestDataset"
        test = []
        if test_root.is_dir():
            for sub in sorted(p for p in test_root.iterdir() if p.is_dir()):
                test += find_pairs(sub / "images", sub / "masks", sub.name, check)
    elif layout == "split":
        pool = find_pairs(root / "train" / "images", root / "train" / "masks", "train", check)
        has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
        test = find_pairs(root / "test" / "images", root / "test" / "masks", "test", check) if has_test else []
        if has_val and has_test:
            validation = find_pairs(root / "val" / "images", root / "val" / "masks", "val", check)
        elif has_val:
            test = find_pairs(root / "val" / "images", root / "val" / "masks", "val", check)
    else:
        pool = find_pairs(root / "images", root / "masks", "", check)
        test = []

    if test_names_file is not None:
        names = read_names(test_names_file)
        everything = pool + validation + test
        by_name = {it["name"]: it for it in everything}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataListError(
                f"{len(missing)} name(s) from {test_names_file} are not in {root}: {', '.join(missing[:10])}"
            )
        wanted = set(names)
        test = [by_name[n] for n in names]
        pool, validation = [it for it in everything if it["name"] not in wanted], []
    elif not test and test_fraction > 0:
        pool, test = _split_off(pool, test_fraction, seed + 1)

    if val_is_test:
        if not test:
            raise DataListError("val_is_test=True but there is no test set (give test_names_file or test_fraction)")
        validation = list(test)
    elif not validation:
        pool, validation = _split_off(pool, val_fraction, seed)
    if not pool:
        raise DataListError(f"no training pairs left in {root}")
    logger.info(
        "data list from %s (layout %s): %d training, %d validation, %d test",
        root, layout, len(pool), len(validation), len(test),
    )
    return {"training": pool, "validation": validation, "test": test}


def save_datalist(datalist: dict[str, list[dict]], path: str | os.PathLike) -> None:
    """Write a data list as JSON atomically (:func:`~vmunetv2_monai.files.atomic_write`).

    Args:
        datalist: the lists, as :func:`build_datalist` returns them.
        path: the JSON file to write.
    """
    write_json(path, datalist)


def load_splits(
    dataset_dir: str | os.PathLike | None = None, datalist_file: str | os.PathLike | None = None, **kwargs
) -> dict[str, list[dict]]:
    """Data lists for a bundle: read ``datalist_file`` (JSON from :func:`save_datalist`) when given, otherwise
    :func:`build_datalist` on ``dataset_dir`` with ``kwargs``.

    Args:
        dataset_dir: the dataset folder (used without ``datalist_file``).
        datalist_file: a JSON data list; its image and label paths are absolute, relative to the working folder,
            or relative to the file's folder (made absolute), and must exist.
        kwargs: :func:`build_datalist` arguments.

    Returns:
        ``{"training", "validation", "test"}`` lists; items from a file get a ``"name"`` (the image's stem) when
        they have none.

    Raises:
        DataListError: naming the file or entry: neither argument given, a missing or invalid JSON file, a list
            that is not a list of objects, an entry without an image or label, or a file that does not exist.
    """
    if datalist_file is None:
        if dataset_dir is None:
            raise DataListError("give dataset_dir or datalist_file")
        return build_datalist(dataset_dir, **kwargs)
    path = Path(datalist_file)
    if not path.is_file():
        raise DataListError(f"data list file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataListError(f"data list file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataListError(f"data list file {path} holds a JSON {type(data).__name__}; expected an object "
                            f"with the lists {', '.join(SPLITS)} (as scripts/make_datalist.py writes)")
    out = {}
    for split in SPLITS:
        items = data.get(split, [])
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise DataListError(f"data list file {path}: '{split}' must be a list of objects with image and label")
        out[split] = list(items)
    for split, items in out.items():
        for item in items:
            for key in ("image", "label"):
                if key not in item:
                    raise DataListError(f"{split} entry {item.get('name', item)} in {path}: no {key} file given")
                item[key] = _list_file(item[key], path, f"{split} entry {item.get('name', item)}", key)
            item.setdefault("name", image_stem(Path(item["image"])))
    return out


def _list_file(entry: str, list_path: Path, what: str, key: str) -> str:
    """The file a data list entry names: absolute, or relative to the working folder (kept as given) or else to
    the data list's folder (made absolute); a missing file is named with every path tried."""
    given = Path(entry)
    if given.is_file():
        return entry
    tried = [given] if given.is_absolute() else [Path.cwd() / given, list_path.parent.resolve() / given]
    if not given.is_absolute() and tried[1].is_file():
        return os.fspath(tried[1])
    where = f" (looked for {' and '.join(map(str, tried))})" if not given.is_absolute() else ""
    raise DataListError(f"{what} in {list_path}: {key} file not found: {entry}{where}")


def list_images(input_dir: str | os.PathLike, broken: list[str] | None = None) -> list[dict]:
    """Images to segment: the image files in ``input_dir`` (or in ``input_dir/images`` when that exists).

    Args:
        input_dir: the folder of images.
        broken: None: a broken link is an error; a list: broken links are added to it (``"path: reason"``) and
            left out.

    Returns:
        Items ``{"image": path, "name": stem}``, sorted by stem.

    Raises:
        DataListError: for a missing folder, a folder without images, two images with one stem, or a broken link
            (without ``broken``).
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise DataListError(f"input folder not found: {root}")
    folder = root / "images" if (root / "images").is_dir() else root
    files = _by_stem(folder, broken)
    return [{"image": str(p), "name": stem} for stem, p in sorted(files.items())]


def require_items(items: Sequence[dict], split: str) -> list[dict]:
    """Check that a split the workflow needs is not empty.

    Args:
        items: the split's items.
        split: the split's name, for the message.

    Returns:
        ``items`` as a list.

    Raises:
        DataListError: naming the split and how to fill it, when ``items`` is empty.
    """
    if not items:
        raise DataListError(
            f"the '{split}' split is empty: give test_names_file or test_fraction for a test set, "
            "val_fraction > 0 for validation, or choose another split"
        )
    return list(items)


def require_lesion(
    items: Sequence[dict], transform: Callable[[dict], Any], data: str | os.PathLike, key: str = "label"
) -> bool:
    """Check that at least one mask of ``items`` has a lesion pixel: training on empty masks would learn to predict
    nothing. Stops at the first mask with a lesion, so usual data costs one read; a mask the rule refuses stops it
    with that file's name.

    Args:
        items: the training items.
        transform: reads an item (the bundle's ``read_transforms``, so the mask rule of
            :class:`~vmunetv2_monai.data.BinarizeMaskd`).
        data: the data list file or dataset folder, named in the error.
        key: the mask key. Defaults to ``"label"``.

    Returns:
        True (for config expressions).

    Raises:
        DataListError: naming ``data`` when no mask has a lesion pixel.
    """
    for item in items:
        if bool(torch.as_tensor(transform(dict(item))[key]).any()):
            return True
    shown = ", ".join(str(it[key]) for it in items[:3]) + (" ..." if len(items) > 3 else "")
    raise DataListError(
        f"all {len(items)} training mask(s) of {data} are empty (no lesion pixel under the mask rule, see "
        f"BinarizeMaskd): {shown}; check that the masks mark the lesion (0/1, 0/255 or labels 1.. on 0)")
