"""vmunetv2_monai: VM-UNetV2 (Vision Mamba UNet v2, Zhang et al., arXiv 2403.09157) for MONAI.

The top level holds the public API: the network (:class:`VMUNetV2`), its selective scan (:func:`selective_scan`,
:func:`available_backends`), the VMamba v0 encoder loader (:func:`load_pretrained_encoder`), and the checks the
bundle's configs call (:func:`check_checkpoint_path`, :func:`check_training_folder`, :func:`lock_folder`).
"""

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
