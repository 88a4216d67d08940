"""Encoders of VM-UNetV2: the VSSM (VMamba v0) backbone with VM-UNetV2's feature taps."""

from .vssm import VSSMEncoder

__all__ = ["VSSMEncoder"]
