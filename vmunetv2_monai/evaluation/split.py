"""Write a train / validation / test split file, refusing any overlap between the sets."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.datalist import save_datalist

__all__ = ["SplitOverlapError", "check_disjoint", "write_split"]


class SplitOverlapError(ValueError):
    """The same case (by name or by file) appears in two sets."""


def check_disjoint(datalist: Mapping[str, Sequence[Mapping[str, str]]]) -> None:
    """Check that no two sets of a data list share a case name or an image file.

    Args:
        datalist: ``{"training" | "validation" | "test": [item, ...]}``, items with ``name`` and ``image``.

    Raises:
        SplitOverlapError: naming the two sets and the shared cases.
    """
    sets = [s for s in ("training", "validation", "test") if datalist.get(s)]
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            keys_a = {k for it in datalist[a] for k in (it["name"], os.path.realpath(it["image"]))}
            shared = sorted({it["name"] for it in datalist[b] if {it["name"], os.path.realpath(it["image"])} & keys_a})
            if shared:
                raise SplitOverlapError(
                    f"{len(shared)} case(s) are in both '{a}' and '{b}': {', '.join(shared[:10])}"
                )


def write_split(datalist: Mapping[str, Sequence[Mapping[str, str]]], path: str | os.PathLike) -> Path:
    """Check the sets are disjoint (:func:`check_disjoint`), then write the data list JSON atomically.

    Args:
        datalist: ``{"training" | "validation" | "test": [item, ...]}``.
        path: the JSON file.

    Returns:
        The path written.
    """
    check_disjoint(datalist)
    save_datalist({k: list(v) for k, v in datalist.items()}, path)
    return Path(path)
