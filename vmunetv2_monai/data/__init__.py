"""Data lists and transforms for the VM-UNetV2 bundle."""

from .datalist import (
    DataListError,
    build_datalist,
    find_pairs,
    list_images,
    load_splits,
    read_names,
    require_items,
    require_lesion,
    save_datalist,
)
from .inputs import InputImages
from .transforms import BinarizeMaskd, EnsureChannelsd, LoadImaged, binarize_mask

__all__ = [
    "BinarizeMaskd",
    "DataListError",
    "EnsureChannelsd",
    "InputImages",
    "LoadImaged",
    "binarize_mask",
    "build_datalist",
    "find_pairs",
    "list_images",
    "load_splits",
    "read_names",
    "require_items",
    "require_lesion",
    "save_datalist",
]
