"""Data lists and transforms for the VM-UNetV2 bundle."""

from .datalist import (
    DataListError,
    build_datalist,
    check_choice,
    check_range,
    find_pairs,
    list_images,
    load_splits,
    read_names,
    require_items,
    save_datalist,
)
from .transforms import BinarizeMaskd, EnsureChannelsd

__all__ = [
    "BinarizeMaskd",
    "DataListError",
    "EnsureChannelsd",
    "build_datalist",
    "check_choice",
    "check_range",
    "find_pairs",
    "list_images",
    "load_splits",
    "read_names",
    "require_items",
    "save_datalist",
]
