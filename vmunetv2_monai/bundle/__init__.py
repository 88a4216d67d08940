"""The VM-UNetV2 bundle's own code: checks of its command line and config values."""

from __future__ import annotations

__all__: list[str] = []
