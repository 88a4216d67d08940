"""Networks: VM-UNetV2 (:mod:`.nets`), its encoder (:mod:`.encoders`) and building blocks (:mod:`.blocks`)."""

from .nets import VMUNetV2

__all__ = ["VMUNetV2"]
