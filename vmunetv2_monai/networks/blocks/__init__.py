"""Building blocks of VM-UNetV2: patch embedding and merging, the SS2D mixer, VSS blocks, SDI fusion, decoder."""

from .decoder import VMUNetV2Decoder
from .patch import PatchEmbed2D, PatchMerging2D
from .sdi import SDI, ChannelAttention, LevelProjection, SpatialAttention
from .ss2d import SS2D
from .vss_block import VSSBlock, VSSLayer

__all__ = [
    "SDI",
    "SS2D",
    "ChannelAttention",
    "LevelProjection",
    "PatchEmbed2D",
    "PatchMerging2D",
    "SpatialAttention",
    "VMUNetV2Decoder",
    "VSSBlock",
    "VSSLayer",
]
