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
import sys
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


#: what the repository ships in a bundle folder (left out: outputs of local runs such as tensorboard/ or predictions/)
BUNDLE_ITEMS = ("LICENSE", "configs", "docs", "large_files.yml", "models", "sample_data")
#: both environments compute the same thing (the compiled CPU scan may be built in one and not in the other)
SERVER_ENV = {"VMUNETV2_SCAN_BACKEND": "torch", "PYTHONUNBUFFERED": "1"}


def stock_app(workspace: Path, bundle: Path, model: str, marker: str) -> Path:
    """The stock ``monaibundle`` sample app, copied out of the installed monailabel by its own CLI, with ``bundle``
    copied file for file into its ``model/<model>`` folder. ``marker`` is a line its ``main.py`` must hold (proof
    that it is the stock app)."""
    cmd = [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle"]
    cmd += ["--output", str(workspace / "apps")]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=workspace)
    assert res.returncode == 0, res.stdout + res.stderr
    app = workspace / "apps" / "monaibundle"
    main = (app / "main.py").read_text()
    assert marker in main and "BundleTrainTask(b, self.conf)" in main, "not the stock app"
    for item in BUNDLE_ITEMS:
        src, dest = bundle / item, app / "model" / model / item
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return app


@contextmanager
def stock_server(workspace: Path, app: Path, studies: Path, model: str, timeout: float) -> Iterator[str]:
    """``monailabel start_server`` with the stock app and ``--conf models <model>`` on 127.0.0.1; zoo_source
    github: a local bundle is then used as it is, without listing the model zoo (which needs the network)."""
    port = free_port()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--conf", "models", model, "--conf", "zoo_source", "github", "--host", "127.0.0.1", "--port", str(port)]
    with running_server(cmd, f"http://127.0.0.1:{port}", workspace / "server.log", workspace,
                        dict(os.environ, **SERVER_ENV), timeout) as base:
        yield base


def bundle_run_masks(
    bundle: Path, images: Sequence[Path], root: Path, extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The model-zoo command from the bundle root, ``python -m monai.bundle run --config_file
    configs/inference.json`` with the main environment's python (``VMUNETV2_MAIN_PYTHON``) and ``extra`` arguments,
    on copies of ``images`` in ``root/data``, with the bundle's models/model.pt -> {stem: 0/1 uint8 mask (H, W)}."""
    main_python = os.environ.get(MAIN_PYTHON_ENV, "")
    if not main_python or not Path(main_python).is_file():
        skip_or_fail(f"{MAIN_PYTHON_ENV} does not name the main environment's python (got {main_python!r})")
    data, out = root / "data", root / "out"
    data.mkdir(parents=True)
    for image in images:
        shutil.copy(image, data / image.name)
    cmd = [main_python, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--dataset_dir", str(data), "--pred_dir", str(out), "--overlay", "False", *extra]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=bundle,
                         env=dict(os.environ, **SERVER_ENV))
    assert res.returncode == 0, f"monai.bundle run failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    masks = {}
    for image in images:
        mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}
        masks[image.stem] = (mask > 0).astype(np.uint8)
    return masks
