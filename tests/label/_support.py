"""Skip-or-fail helpers for the MONAI Label tests.

These tests need ``monailabel``, which lives in its own environment (``bash scripts/setup_monailabel.sh`` creates
``.venv-label``; run them with ``.venv-label/bin/python -m pytest -q tests/label``). In any other environment they
skip with the reason. ``VMUNETV2_REQUIRE_MONAILABEL=1`` (set by ``.ci/run``) turns every such skip into a failure,
so that CI cannot pass with the label tests silently skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._servers import free_port, wait_until_serving

logger = logging.getLogger(__name__)

REQUIRE_ENV = "VMUNETV2_REQUIRE_MONAILABEL"
MAIN_PYTHON_ENV = "VMUNETV2_MAIN_PYTHON"


def required() -> bool:
    """True when skipping is not allowed (CI's label-environment run)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail with it when :func:`required`."""
    if required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_monailabel() -> None:
    """Skip (or fail, see :func:`required`) when monailabel cannot be imported here."""
    try:
        import monailabel  # noqa: F401
    except ImportError as e:
        skip_or_fail(
            f"monailabel is not importable in this environment ({e}); create the MONAI Label environment with "
            "`bash scripts/setup_monailabel.sh` and run `.venv-label/bin/python -m pytest -q tests/label`"
        )


@contextmanager
def running_server(
    cmd: Sequence[str], base: str, log_path: Path, cwd: Path, env: dict[str, str], timeout: float
) -> Iterator[str]:
    """Start ``cmd`` (a MONAI Label server listening at ``base``), wait at most ``timeout`` s for ``GET /info/``,
    yield ``base`` and stop the server afterwards; fail with the log's tail if it exits or is not ready in time."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    start = time.monotonic()
    try:
        wait_until_serving(proc, f"{base}/info/", log_path, timeout, "MONAI Label server")
        logger.info("MONAI Label server ready at %s in %.1f s", base, time.monotonic() - start)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def binary_png(src: Path, dest: Path) -> None:
    """A mask (0..255, also with JPEG noise) -> a MONAI Label final label: PNG with 0 / 1."""
    mask = np.asarray(Image.open(src).convert("L")) > 127
    Image.fromarray(mask.astype(np.uint8)).save(dest, format="PNG")


def local_datastore(root: Path, images: Sequence[Path], masks: Sequence[Path]) -> Path:
    """A MONAI Label local datastore in ``root``: the images, and each mask as the final label of the image with
    the same stem."""
    (root / "labels" / "final").mkdir(parents=True)
    for image in images:
        shutil.copy(image, root / image.name)
    for mask in masks:
        binary_png(mask, root / "labels" / "final" / f"{mask.stem}.png")
    return root
