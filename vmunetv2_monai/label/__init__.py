"""MONAI Label pieces for the VM-UNetV2 bundle: what MONAI Label's stock ``monaibundle`` app lacks (``docs/label.md``).

Every module needs ``monailabel`` (a separate environment: ``bash scripts/setup_monailabel.sh``). :mod:`.server` is
MONAI Label's server with 4xx answers (``--uvicorn_app vmunetv2_monai.label.server:app``, also for the stock app);
:mod:`.app` serves the bundle with the stock bundle tasks plus the ``uncertainty`` strategy and request checks. Start
it with ``monailabel start_server --app <this folder> ...``: the folder holds the app's ``main.py``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["APP_DIR"]

#: The folder to pass to ``monailabel start_server --app``.
APP_DIR: Path = Path(__file__).resolve().parent
