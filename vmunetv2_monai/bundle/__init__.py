"""The VM-UNetV2 bundle's own code: opening a bundle folder (:mod:`.opener`), checks of its command line and config
values (:mod:`.checks`), its weight files against ``large_files.yml`` (:mod:`.weights`) and inference on in-memory
images (:mod:`.predictor`, imported from there: it loads the network code)."""

from __future__ import annotations

from .opener import DEFAULT_BUNDLE, Bundle

__all__ = ["DEFAULT_BUNDLE", "Bundle"]
