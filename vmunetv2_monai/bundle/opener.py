"""One way to open a MONAI bundle folder: its paths, metadata, labels, parsed configs and workflows.

:class:`Bundle` is what the predictor, the results recipe, the scripts, the DICOM service, the MONAI Label app and
the Deploy app use to reach a bundle (``<root>/configs/*.json``, ``<root>/models/model.pt``). Every config or
metadata file it reads is checked first (:func:`~vmunetv2_monai.errors.check_config_files`), so a missing file or
one that is not valid JSON is named with its line and column instead of failing inside MONAI.

Examples::

    bundle = Bundle()  # bundle/ of this source checkout
    parser = bundle.config("inference", {"output_dir": "out"})
    network = parser.get_parsed_content("network_def")
    bundle.labels  # {"lesion": 1}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow

from ..errors import check_config_files

__all__ = ["DEFAULT_BUNDLE", "Bundle"]

logger = logging.getLogger(__name__)

#: The bundle of this source checkout (``bundle/`` beside the package): the default of every entry point.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"

_CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


class Bundle:
    """A MONAI bundle folder (model-zoo layout: ``configs/``, ``models/``, ``docs/``).

    Args:
        root: the bundle folder; default :data:`DEFAULT_BUNDLE`. ``~`` is expanded and the path made absolute, so
            ``bundle_root`` in every parsed config is absolute.

    Raises:
        FileNotFoundError: ``root`` is not a folder (named).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(DEFAULT_BUNDLE if root is None else root).expanduser().absolute()
        if not self.root.is_dir():
            raise FileNotFoundError(f"bundle folder not found: {self.root}")

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r})"

    @property
    def configs_dir(self) -> Path:
        """``<root>/configs``."""
        return self.root / "configs"

    @property
    def models_dir(self) -> Path:
        """``<root>/models``."""
        return self.root / "models"

    @property
    def model_path(self) -> Path:
        """``<root>/models/model.pt``, the bundle's weights (may be missing)."""
        return self.models_dir / "model.pt"

    @property
    def metadata_path(self) -> Path:
        """``<root>/configs/metadata.json``."""
        return self.configs_dir / "metadata.json"

    def config_path(self, name: str) -> Path:
        """The config file ``name`` in ``configs/`` (``"inference"`` gives ``configs/inference.json``).

        Args:
            name: a file name, with or without its suffix (``.json`` by default).

        Raises:
            FileNotFoundError: no such file (named).
        """
        path = self.configs_dir / (name if name.endswith(_CONFIG_SUFFIXES) else f"{name}.json")
        if not path.is_file():
            raise FileNotFoundError(f"the bundle has no {path.stem} config: {path} is missing")
        return path

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """``configs/metadata.json`` as a dict (read once).

        Raises:
            BundleFileError: the file is missing or not valid JSON (named, with line and column).
        """
        check_config_files(self.metadata_path)
        with open(self.metadata_path, encoding="utf-8") as fp:
            return json.load(fp)

    def _network_format(self, part: str) -> dict[str, Any]:
        """The first entry of ``network_data_format.<part>`` (``inputs`` or ``outputs``); empty when there is none."""
        entries = self.metadata.get("network_data_format", {}).get(part, {})
        first = next(iter(entries.values()), {}) if isinstance(entries, Mapping) else {}
        return first if isinstance(first, dict) else {}

    @property
    def channel_def(self) -> dict[int, str]:
        """Value -> name of the first network output's ``channel_def``, names spelled as the metadata spells them
        (``{0: "background", 1: "lesion"}``: the values of the thresholded mask); empty when the metadata declares
        no output."""
        return {int(k): str(v) for k, v in self._network_format("outputs").get("channel_def", {}).items()}

    @property
    def labels(self) -> dict[str, int]:
        """Label name -> value in the predicted mask: every :attr:`channel_def` entry except "background" (in any
        case), as MONAI Label's stock bundle task reads it (``{"lesion": 1}``)."""
        return {name: value for value, name in sorted(self.channel_def.items()) if name.lower() != "background"}

    @property
    def spatial_dims(self) -> int:
        """Number of spatial dimensions of the first network input (2 for this bundle; 3 when not stated)."""
        shape = self._network_format("inputs").get("spatial_shape")
        return len(shape) if shape else 3

    def config_files(self, files: str | Sequence[str]) -> list[Path]:
        """The config files ``files`` (names in ``configs/``, merged in this order), checked to exist.

        Args:
            files: one name or several, with or without their suffix (``"inference"``, ``"evaluate.json"``).
        """
        return [self.config_path(name) for name in ([files] if isinstance(files, str) else files)]

    def config(self, files: str | Sequence[str] = "inference",
               overrides: Mapping[str, Any] | None = None) -> ConfigParser:
        """The config files ``files`` merged (with the metadata as ``_meta_``), ``bundle_root`` set to :attr:`root`,
        then ``overrides`` (config id -> value).

        Args:
            files: names in ``configs/`` (see :meth:`config_files`), merged in order; default ``"inference"``.
            overrides: config ids and values set over the merged files (e.g. a recipe's recorded overrides).

        Returns:
            a parsed :class:`monai.bundle.ConfigParser` (setting an id later is fine: ``get_parsed_content``
            parses again by default).

        Raises:
            FileNotFoundError: a config file is missing (named).
            BundleFileError: a config file or the metadata is not valid JSON (named, with line and column).
        """
        paths = self.config_files(files)
        check_config_files(*paths, *([self.metadata_path] if self.metadata_path.exists() else []))
        parser = ConfigParser()
        parser.read_config([str(p) for p in paths])
        if self.metadata_path.exists():
            parser.read_meta(str(self.metadata_path))
        parser["bundle_root"] = str(self.root)
        parser.update(dict(overrides or {}))
        parser.parse()
        logger.debug("%s: %s with %d override(s)", self, ", ".join(p.name for p in paths), len(overrides or {}))
        return parser

    def workflow(self, workflow_type: str = "inference", files: str | Sequence[str] | None = None,
                 **override: Any) -> ConfigWorkflow:
        """A :class:`monai.bundle.ConfigWorkflow` of this bundle (not yet initialized), as ``monai.bundle run``
        builds it.

        Args:
            workflow_type: ``"train"`` or ``"inference"`` (MONAI's names, e.g. ``"infer"``, also work).
            files: config names in ``configs/`` (see :meth:`config_files`); default ``"train"`` for a training
                workflow and ``"inference"`` otherwise.
            override: config ids and values over the files (``ConfigWorkflow``'s ``**override``).

        Raises:
            FileNotFoundError: a config file is missing (named).
            BundleFileError: a config file or the metadata is not valid JSON (named).
        """
        default = "train" if workflow_type.lower().startswith("train") else "inference"
        paths = self.config_files(default if files is None else files)
        check_config_files(*paths, self.metadata_path)
        logging_file = self.configs_dir / "logging.conf"
        return ConfigWorkflow(
            config_file=[str(p) for p in paths] if len(paths) > 1 else str(paths[0]),
            meta_file=str(self.metadata_path),
            logging_file=str(logging_file) if logging_file.is_file() else None,
            workflow_type=workflow_type,
            bundle_root=str(self.root),
            **override,
        )
