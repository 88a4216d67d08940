"""Skip-or-fail rule of the MONAI Deploy tests: they need monai-deploy-app-sdk, which lives in ``.venv-deploy``
(``bash scripts/setup_deploy.sh``). Elsewhere they skip with the reason; ``VMUNETV2_REQUIRE_DEPLOY=1`` (set by
``.ci/run``) turns the skip into a failure."""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "VMUNETV2_REQUIRE_DEPLOY"


def skip_or_fail_without_sdk(err: ImportError) -> None:
    """Skip the calling test module because the SDK failed to import with ``err`` (fail under the require flag)."""
    reason = (f"monai-deploy-app-sdk is not importable here ({err}); create its environment with "
              "`bash scripts/setup_deploy.sh` and run `.venv-deploy/bin/python -m pytest -q tests/deploy`")
    if os.environ.get(REQUIRE_ENV, "") == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
