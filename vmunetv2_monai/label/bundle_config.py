"""Read the VM-UNetV2 bundle the way MONAI Label needs it (monai only; no monailabel import).

The bundle splits its configs: ``common.json`` holds the network, device and preprocessing, and each workflow config
(``inference.json``, ``train.json``) is merged over it. MONAI Label's stock bundle tasks read one config file only, so
the tasks here merge ``common.json`` + the workflow config + ``monailabel_overrides.json`` (model file in
``<bundle>/models``, no data loader workers, no progress bar) + ``monailabel_<workflow>_overrides.json`` (training:
partial batches kept, latest state outside ``models/``) themselves.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["BundleError", "BundleFiles", "label_map", "load_metadata", "load_parser", "spatial_dims"]

logger = logging.getLogger(__name__)

COMMON_CONFIG = "common.json"
OVERRIDE_CONFIG = "monailabel_overrides.json"
METADATA = "metadata.json"
MODEL_FILE = "model.pt"


class BundleError(ValueError):
    """The bundle folder lacks something MONAI Label needs."""


@dataclass(frozen=True)
class BundleFiles:
    """Paths of one bundle folder (``<root>/configs/*.json``, ``<root>/models/model.pt``)."""

    root: Path

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> BundleFiles:
        """Check that ``path`` is a bundle with metadata and the common config; raise :class:`BundleError` if not."""
        root = Path(path).expanduser().resolve()
        files = cls(root)
        for required in (files.metadata, files.config(COMMON_CONFIG)):
            if not required.is_file():
                raise BundleError(f"not a VM-UNetV2 bundle folder: {required} is missing")
        return files

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def metadata(self) -> Path:
        return self.configs_dir / METADATA

    @property
    def model_path(self) -> Path:
        return self.models_dir / MODEL_FILE

    def config(self, name: str) -> Path:
        return self.configs_dir / name

    def config_files(self, workflow: str) -> list[str]:
        """``common.json``, ``<workflow>.json``, then, when present, ``monailabel_overrides.json`` and
        ``monailabel_<workflow>_overrides.json`` (merged in this order)."""
        main = self.config(f"{workflow}.json")
        if not main.is_file():
            raise BundleError(f"the bundle has no {workflow} config: {main} is missing")
        files = [self.config(COMMON_CONFIG), main]
        for name in (OVERRIDE_CONFIG, f"monailabel_{workflow}_overrides.json"):
            if self.config(name).is_file():
                files.append(self.config(name))
        return [str(f) for f in files]

    def model_files(self) -> list[str]:
        """Names of the ``*.pt`` files in ``models/``, ``model.pt`` first."""
        if not self.models_dir.is_dir():
            return []
        names = sorted(p.name for p in self.models_dir.glob("*.pt") if p.is_file())
        return sorted(names, key=lambda n: (n != MODEL_FILE, n))


def load_parser(files: BundleFiles, workflow: str, overrides: dict[str, Any] | None = None) -> ConfigParser:
    """Merged, unparsed :class:`ConfigParser` for ``workflow`` with ``bundle_root`` set to the bundle folder."""
    parser = ConfigParser()
    parser.read_config(files.config_files(workflow))
    parser.read_meta(str(files.metadata))
    parser.update({"bundle_root": str(files.root), **(overrides or {})})
    return parser


def load_metadata(files: BundleFiles) -> dict[str, Any]:
    """The bundle's ``metadata.json`` as a dict."""
    with open(files.metadata, encoding="utf-8") as fp:
        return json.load(fp)


def label_map(metadata: dict[str, Any]) -> dict[str, int]:
    """Label name -> value in the predicted mask, from ``network_data_format.outputs.<first>.channel_def``.

    A one-channel (sigmoid) output is binary: its channel 0 is the foreground, written as 1 in the mask. With several
    channels (softmax + argmax) the value is the channel index; a channel named "background" is left out.
    """
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if not outputs:
        raise BundleError("metadata.json has no network_data_format.outputs")
    pred = next(iter(outputs.values()))
    channel_def = {int(k): str(v) for k, v in pred.get("channel_def", {}).items()}
    num_channels = int(pred.get("num_channels", len(channel_def) or 1))
    if num_channels == 1:
        name = channel_def.get(0, "foreground")
        return {name.lower(): 1}
    return {v.lower(): k for k, v in sorted(channel_def.items()) if v.lower() != "background"}


def spatial_dims(metadata: dict[str, Any]) -> int:
    """Number of spatial dimensions of the first network input (2 for this bundle)."""
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    if not inputs:
        raise BundleError("metadata.json has no network_data_format.inputs")
    shape = next(iter(inputs.values())).get("spatial_shape")
    return len(shape) if shape else 3
