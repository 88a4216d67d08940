"""Scan kernels (cross-scan, selective-scan backends) and the mixed-precision policy they run under."""

from .amp import AMP_CHOICES, autocast_dtype

__all__ = ["AMP_CHOICES", "autocast_dtype"]
