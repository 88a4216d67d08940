"""vmunetv2_monai: VM-UNetV2 (Vision Mamba UNet v2) for MONAI."""

from .bundle.weights import check_training_folder
from .checkpoints import check_checkpoint_path
from .locks import lock_folder
from .networks import VMUNetV2
from .ops.selective_scan import available_backends, selective_scan
from .pretrained.vmamba import load_pretrained_encoder

__all__ = [
    "VMUNetV2", "available_backends", "check_checkpoint_path", "check_training_folder", "load_pretrained_encoder",
    "lock_folder", "selective_scan",
]
__version__ = "0.2.0"
