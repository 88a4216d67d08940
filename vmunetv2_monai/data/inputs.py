"""The images of an inference folder, each checked through the preprocessing before the run, so one bad file
never stops the others: good images are segmented, bad ones are named at the end and the run fails."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datalist import DataListError, list_images

__all__ = ["BadInputsError", "InputImages"]

logger = logging.getLogger(__name__)


class BadInputsError(RuntimeError):
    """Some input images could not be read; the message names each one and why."""


class InputImages:
    """Images of ``input_dir`` (or ``input_dir/images``) split into ``good`` items and ``bad`` ``"path: reason"``
    lines by running ``transform`` on each one (a file that fails it would fail the run).

    Attach it to the inference engine: when the engine completes it raises :class:`BadInputsError` naming the
    bad files, so predictions exist for every good image and the command still exits non-zero. When no image is
    good the error is raised at once. ``output_dir`` must not be the folder of the inputs (the masks would
    overwrite or join them).

    Args:
        input_dir: folder of images.
        transform: the inference preprocessing (called on ``{"image": path, "name": stem}``).
        output_dir: where predictions go; checked, not created.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        transform: Callable[[dict], Any],
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        items = list_images(input_dir)
        folder = Path(items[0]["image"]).parent
        if output_dir is not None and Path(output_dir).resolve() == folder.resolve():
            raise DataListError(f"the output folder 'pred_dir' ({output_dir}) is the input folder {folder}: the "
                                "masks would be written among the inputs; choose another pred_dir")
        self.good: list[dict] = []
        self.bad: list[str] = []
        for item in items:
            try:
                transform(dict(item))
            except Exception as err:  # any failure of the preprocessing marks this file bad; it is reported
                self.bad.append(f"{item['image']}: {_reason(err)}")
                logger.error("cannot read %s, skipped: %s", item["image"], _reason(err))
            else:
                self.good.append(item)
        if not self.good:
            raise BadInputsError(f"none of the {len(items)} image(s) in {folder} can be read:\n  " + "\n  ".join(self.bad))

    def attach(self, engine: Any) -> None:
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
