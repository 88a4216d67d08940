"""Algorithm identification for the SEG (name, version, segment label), from the bundle metadata if present."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

logger = logging.getLogger(__name__)

#: Manufacturer written into every object we create; also how the pipeline recognises its own outputs.
MANUFACTURER = "vmunetv2-monai"
DEFAULT_NAME = "VM-UNetV2"
DEFAULT_LABEL = "polyp"


@dataclass(frozen=True)
class AlgorithmInfo:
    """What the SEG says about the algorithm that produced it."""

    name: str = DEFAULT_NAME
    version: str = __version__
    segment_label: str = DEFAULT_LABEL

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path | None) -> AlgorithmInfo:
        """Read ``configs/metadata.json`` (``name``, ``version``, output ``channel_def``); defaults otherwise.

        Defaults: name "VM-UNetV2", the package version, label "polyp".
        """
        if bundle_dir is None:
            return cls()
        path = Path(bundle_dir) / "configs" / "metadata.json"
        if not path.is_file():
            logger.info("no %s; using package name/version for the SEG", path)
            return cls()
        meta = json.loads(path.read_text())
        label = DEFAULT_LABEL
        outputs = meta.get("network_data_format", {}).get("outputs", {})
        for out in outputs.values():
            channels = out.get("channel_def", {}) if isinstance(out, dict) else {}
            names = [str(v) for k, v in sorted(channels.items()) if str(v).lower() != "background"]
            if names:
                label = names[0]
                break
        return cls(name=str(meta.get("name", DEFAULT_NAME)), version=str(meta.get("version", __version__)),
                   segment_label=label)
