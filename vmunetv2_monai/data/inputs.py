"""The images of an inference folder, each checked through the preprocessing before the run, so one bad file
never stops the others: good images are segmented, bad ones (unreadable, a broken link, an output name too long
for the file system) are named at the end and the run fails."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..files import NAME_MAX
from .datalist import DataListError, list_images, warn_exif_orientation

__all__ = ["BadInputsError", "InputImages", "prediction_names"]

logger = logging.getLogger(__name__)


def prediction_names(name: str, source: str, overlay: bool = True) -> tuple[str, ...]:
    """The file names :class:`~vmunetv2_monai.handlers.PredictionWriter` writes for one image.

    Args:
        name: the image's name (its data-list ``name``).
        source: the file the image was read from.
        overlay: include the overlay's name.

    Returns:
        ``<name>_mask.png`` (``<name>_mask.nii.gz`` for a NIfTI ``source``) and, with ``overlay``,
        ``<name>_overlay.png``.
    """
    nifti = source.lower().endswith((".nii", ".nii.gz"))
    return (f"{name}_mask.nii.gz" if nifti else f"{name}_mask.png",) + ((f"{name}_overlay.png",) if overlay else ())


class BadInputsError(RuntimeError):
    """Some input images could not be read; the message names each one and why."""


class InputImages:
    """Images of ``input_dir`` (or ``input_dir/images``) split into ``good`` items and ``bad`` ``"path: reason"``
    lines by running ``transform`` on each one (a file that fails it would fail the run). Broken links and images
    whose prediction file names (:func:`prediction_names`) would be longer
    than :data:`~vmunetv2_monai.files.NAME_MAX` bytes are bad too; an image with an EXIF orientation
    gets a WARNING (it is read as stored).

    Attach it to the inference engine: when the engine completes it raises :class:`BadInputsError` naming the
    bad files, so predictions exist for every good image and the command still exits non-zero. When no image is
    good the error is raised at once. ``output_dir`` must not be the folder of the inputs (the masks would
    overwrite or join them).

    Args:
        input_dir: folder of images.
        transform: the inference preprocessing (called on ``{"image": path, "name": stem}``).
        output_dir: where predictions go; checked, not created.
        extra_keys: keys to add to an image's item, by image file name (e.g. the interactive model's clicks, see
            :func:`~vmunetv2_monai.interactive.read_clicks_file`); a name matching no image is a bad line.

    Raises:
        DataListError: for a missing input folder, one without images, or ``output_dir`` equal to the images'
            folder.
        BadInputsError: when no image is good (here), or when the engine completes with bad images (attached).
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        transform: Callable[[dict], Any],
        output_dir: str | os.PathLike | None = None,
        extra_keys: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.bad: list[str] = []
        items = list_images(input_dir, broken=self.bad)
        extra = dict(extra_keys or {})
        for item in items:
            item.update(extra.pop(Path(item["image"]).name, {}))
        for name in extra:
            self.bad.append(f"{name}: named in extra_keys, but {input_dir} has no such image")
            logger.error("%s: named in extra_keys, but %s has no such image", name, input_dir)
        folder = Path(items[0]["image"]).parent
        if output_dir is not None and Path(output_dir).resolve() == folder.resolve():
            raise DataListError(f"the output folder 'pred_dir' ({output_dir}) is the input folder {folder}: the "
                                "masks would be written among the inputs; choose another pred_dir")
        self.good: list[dict] = []
        for item in items:
            too_long = [n for n in prediction_names(item["name"], item["image"]) if len(n.encode()) > NAME_MAX]
            if too_long:
                reason = (f"its prediction file name {too_long[0]} would be {len(too_long[0].encode())} bytes, past "
                          f"the file system's limit of {NAME_MAX}: rename the image (a shorter name)")
                self.bad.append(f"{item['image']}: {reason}")
                logger.error("%s skipped: %s", item["image"], reason)
                continue
            try:
                transform(dict(item))
                warn_exif_orientation(item["image"])
            except Exception as err:  # any failure of the preprocessing marks this file bad; it is reported
                self.bad.append(f"{item['image']}: {_reason(err)}")
                logger.error("cannot read %s, skipped: %s", item["image"], _reason(err))
            else:
                self.good.append(item)
        if not self.good:
            raise BadInputsError(f"none of the {len(self.bad)} image(s) in {folder} can be read:\n  "
                                 + "\n  ".join(self.bad))

    def attach(self, engine: Any) -> None:
        """Raise :class:`BadInputsError` naming the bad images when ``engine`` completes, if there are any.

        Args:
            engine: the inference engine (an ignite ``Engine``).
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._report)

    def _report(self, engine: Any) -> None:
        if self.bad:
            raise BadInputsError(f"{len(self.bad)} of {len(self.bad) + len(self.good)} input image(s) could not be "
                                 "read and have no prediction (the others do):\n  " + "\n  ".join(self.bad))


def _reason(err: BaseException) -> str:
    """The innermost cause of ``err`` in one line (MONAI wraps transform errors in 'applying transform ...')."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
