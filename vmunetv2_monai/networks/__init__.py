"""Networks: VM-UNetV2 (:mod:`.nets`), its encoder (:mod:`.encoders`), building blocks (:mod:`.blocks`), and
CUDA-graph replay of an inference forward (:mod:`.graphed`)."""

from .graphed import CUDAGraphed
from .nets import VMUNetV2

__all__ = ["CUDAGraphed", "VMUNetV2"]
