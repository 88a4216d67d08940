"""Algorithm identification for the SEG (name, version, segment label), from the bundle metadata if present."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..bundle.opener import Bundle

__all__ = ["DEFAULT_LABEL", "DEFAULT_NAME", "MANUFACTURER", "AlgorithmInfo"]

logger = logging.getLogger(__name__)

#: Manufacturer written into every object we create; also how the pipeline recognises its own outputs.
MANUFACTURER = "vmunetv2-monai"
DEFAULT_NAME = "VM-UNetV2"
DEFAULT_LABEL = "polyp"


@dataclass(frozen=True)
class AlgorithmInfo:
    """What the SEG says about the algorithm that produced it.

    Attributes:
        name: algorithm name written into the SEG (default "VM-UNetV2").
        version: algorithm version (default: the package version).
        segment_label: label of the segment (default "polyp").
    """

    name: str = DEFAULT_NAME
    version: str = __version__
    segment_label: str = DEFAULT_LABEL

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path | None) -> AlgorithmInfo:
        """Read ``configs/metadata.json`` (``name``, ``version``, output ``channel_def``); defaults otherwise.

        Defaults: name "VM-UNetV2", the package version, label "polyp".

        Args:
            bundle_dir: the bundle folder; ``None``, a missing folder or one without ``configs/metadata.json`` gives
                the defaults.

        Returns:
            the algorithm identification, the first output label as ``segment_label``.
        """
        if bundle_dir is None or not Path(bundle_dir).is_dir():
            return cls()
        bundle = Bundle(bundle_dir)
        if not bundle.metadata_path.is_file():
            logger.info("no %s; using package name/version for the SEG", bundle.metadata_path)
            return cls()
        meta, labels = bundle.metadata, list(bundle.labels)
        return cls(name=str(meta.get("name", DEFAULT_NAME)), version=str(meta.get("version", __version__)),
                   segment_label=labels[0] if labels else DEFAULT_LABEL)
