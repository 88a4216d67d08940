"""Pretrained weights: loading VMamba v0 ImageNet checkpoints into the VM-UNetV2 encoder."""

from .vmamba import LoadReport, load_pretrained_encoder, map_vmamba_v0_state_dict

__all__ = ["LoadReport", "load_pretrained_encoder", "map_vmamba_v0_state_dict"]
