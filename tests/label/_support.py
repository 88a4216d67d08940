"""Skip-or-fail helpers for the MONAI Label tests.

These tests need ``monailabel``, which lives in its own environment (``bash scripts/setup_monailabel.sh`` creates
``.venv-label``; run them with ``.venv-label/bin/python -m pytest -q tests/label``). In any other environment they
skip with the reason. ``VMUNETV2_REQUIRE_MONAILABEL=1`` (set by ``.ci/run``) turns every such skip into a failure,
so that CI cannot pass with the label tests silently skipped.
"""

from __future__ import annotations

import os

import pytest

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
