"""Read the VM-UNetV2 bundle the way MONAI Label needs it (monai only; no monailabel import).

``inference.json`` and ``train.json`` each stand alone (model-zoo layout), so MONAI Label's stock ``monaibundle``
tasks serve the bundle unchanged. This package's own tasks merge ``<workflow>.json`` + ``monailabel_overrides.json``
(no data loader workers, no progress bar, latest training state outside ``models/``) +
``monailabel_<workflow>_overrides.json`` themselves.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from ..errors import BundleFileError, check_config_files

__all__ = ["BundleError", "BundleFiles", "label_map", "load_metadata", "load_parser", "spatial_dims"]

logger = logging.getLogger(__name__)

INFERENCE_CONFIG = "inference.json"
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
        """Check that ``path`` is a bundle with metadata and the inference config; raise :class:`BundleError` if not."""
        root = Path(path).expanduser().resolve()
        files = cls(root)
        for required in (files.metadata, files.config(INFERENCE_CONFIG)):
            if not required.is_file():
                raise BundleError(f"not a VM-UNetV2 bundle folder: {required} is missing")
        try:
            check_config_files(files.metadata, files.config(INFERENCE_CONFIG))
        except BundleFileError as err:
            raise BundleError(str(err)) from err
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
        """``<workflow>.json``, then, when present, ``monailabel_overrides.json`` and
        ``monailabel_<workflow>_overrides.json`` (merged in this order)."""
        main = self.config(f"{workflow}.json")
        if not main.is_file():
            raise BundleError(f"the bundle has no {workflow} config: {main} is missing")
        files = [main]
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
    try:
        check_config_files(*files.config_files(workflow), files.metadata)
    except BundleFileError as err:
        raise BundleError(str(err)) from err
    parser.read_config(files.config_files(workflow))
    parser.read_meta(str(files.metadata))
    parser.update({"bundle_root": str(files.root), **(overrides or {})})
    return parser


def load_metadata(files: BundleFiles) -> dict[str, Any]:
    """The bundle's ``metadata.json`` as a dict."""
    try:
        check_config_files(files.metadata)
    except BundleFileError as err:
        raise BundleError(str(err)) from err
    with open(files.metadata, encoding="utf-8") as fp:
        return json.load(fp)


def label_map(metadata: dict[str, Any]) -> dict[str, int]:
    """Label name -> value in the predicted mask, from ``network_data_format.outputs.<first>.channel_def``.

    As MONAI Label's stock bundle task reads it: every entry except "background" (the bundle's one sigmoid channel
    declares ``{"0": "background", "1": "lesion"}``, the values of its thresholded mask).
    """
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if not outputs:
        raise BundleError("metadata.json has no network_data_format.outputs")
    pred = next(iter(outputs.values()))
    return {str(v).lower(): int(k) for k, v in pred.get("channel_def", {}).items() if str(v).lower() != "background"}


def spatial_dims(metadata: dict[str, Any]) -> int:
    """Number of spatial dimensions of the first network input (2 for this bundle)."""
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    if not inputs:
        raise BundleError("metadata.json has no network_data_format.inputs")
    shape = next(iter(inputs.values())).get("spatial_shape")
    return len(shape) if shape else 3
