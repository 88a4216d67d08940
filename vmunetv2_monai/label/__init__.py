"""MONAI Label app for the VM-UNetV2 bundle (2D RGB segmentation).

Only :mod:`vmunetv2_monai.label.bundle_config` imports without MONAI Label; the app, the tasks and the strategies
need ``monailabel`` (a separate environment: ``bash scripts/setup_monailabel.sh``, see docs/label.md).
Start the server with ``monailabel start_server --app <this folder> ...``: the folder holds the app's ``main.py``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

#: The folder to pass to ``monailabel start_server --app``.
APP_DIR: Path = Path(__file__).resolve().parent
