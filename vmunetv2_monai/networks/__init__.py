"""Networks: VM-UNetV2 and its building blocks."""

from .nets.vmunetv2 import VMUNetV2

__all__ = ["VMUNetV2"]
