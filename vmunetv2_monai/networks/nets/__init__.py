"""Complete networks: VM-UNetV2."""

from .vmunetv2 import VMUNetV2

__all__ = ["VMUNetV2"]
