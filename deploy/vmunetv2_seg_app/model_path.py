"""Map the model path a MONAI Deploy app is given (``-m``, ``HOLOSCAN_MODEL_PATH``, default ``models``) to what
monai-deploy-app-sdk 4.0.0's ``MonaiBundleInferenceOperator`` can run.

The SDK's ``AppContext`` turns the path into a ``Model`` and the operator takes that model's path as the bundle;
only a TorchScript file works unchanged. A bundle folder or a ``.pt`` state dict becomes a plain ``Model`` without
a predictor, and ``bundle/models`` (the default ``models`` when run from ``bundle/``) is no bundle, so each of
those crashed. :func:`resolve_model` accepts:

- a bundle folder (``configs/inference.json`` and ``configs/metadata.json``): the operator's own directory-bundle
  loading (``models/model.ts`` if present, else ``models/model.pt``, ``strict=True``);
- a bundle's ``models`` folder: its bundle, as above;
- a state dict file (e.g. ``models/model.pt``) inside a bundle's ``models`` folder: the network of that bundle's
  ``configs/inference.json`` with exactly this file's weights (``torch.load(weights_only=True)``, ``strict=True``);
- a TorchScript file (``ckpt_export``'s ``model.ts``, ``extra/`` holding ``inference.json`` and
  ``metadata.json``): the SDK's ``TorchScriptModel``, configs read from the archive;
- a folder holding exactly one entry (a MAP's model repository, ``/opt/holoscan/models/<name>/model.ts``): that
  entry.

Anything else raises :class:`ModelPathError` naming the path.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from monai.deploy.core.models import Model, TorchScriptModel

logger = logging.getLogger(__name__)

#: The bundle config the app runs (``configs/inference.json``, or ``extra/inference.json`` of a TorchScript file).
CONFIG_NAME = "inference"
_MAX_DEPTH = 3
ACCEPTED = ("a bundle folder (configs/inference.json + configs/metadata.json), its models/ folder, a state dict "
            "inside <bundle>/models/ (e.g. models/model.pt), or a TorchScript model.ts exported with "
            "`python -m monai.bundle ckpt_export`")


class ModelPathError(ValueError):
    """The model path is none of the forms :func:`resolve_model` accepts."""


@dataclass(frozen=True)
class ResolvedModel:
    """What the bundle operator gets: ``bundle_path`` (its ``bundle_path`` argument) and ``model`` (the
    ``AppContext.models`` it reads first; ``None`` lets the operator load the bundle folder itself)."""

    bundle_path: Path
    model: Model | None
    kind: str


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds the two configs the operator reads."""
    return (folder / "configs" / f"{CONFIG_NAME}.json").is_file() and (folder / "configs" / "metadata.json").is_file()


def _torchscript_with_configs(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive; raise when it lacks the bundle configs the operator reads."""
    if not TorchScriptModel.accept(str(path))[0]:
        return False
    with zipfile.ZipFile(path) as archive:
        names = {n.split("/", 1)[-1] for n in archive.namelist()}
    missing = [f"extra/{n}.json" for n in ("metadata", CONFIG_NAME) if f"extra/{n}.json" not in names]
    if missing:
        raise ModelPathError(f"model path {path}: TorchScript file without {', '.join(missing)}; export it with "
                             "`python -m monai.bundle ckpt_export ... --config_file configs/inference.json`")
    return True


def _checkpoint_model(path: Path) -> ResolvedModel:
    """A state dict inside ``<bundle>/models/``: the bundle's network with this file's weights."""
    from vmunetv2_monai.bundle import Bundle
    from vmunetv2_monai.checkpoints import load_state_dict  # torch.load(weights_only=True), errors naming the file

    bundle = path.parent.parent
    if path.parent.name != "models" or not is_bundle(bundle):
        raise ModelPathError(f"model path {path}: a checkpoint must sit in a bundle's models/ folder (the bundle's "
                             f"configs give the network and the transforms); expected {ACCEPTED}")
    parser = Bundle(bundle).config(CONFIG_NAME)
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_state_dict(path), strict=True)
    model = Model(str(bundle), name=path.stem)
    model.predictor = network.eval()
    logger.info("model: bundle %s with weights %s", bundle, path)
    return ResolvedModel(bundle, model, "checkpoint")


def resolve_model(path: str | Path, _depth: int = 0) -> ResolvedModel:
    """Resolve ``path`` (see the module docstring); raise :class:`ModelPathError` naming it otherwise."""
    given = Path(path).expanduser()
    p = given.resolve()
    if not p.exists():
        raise ModelPathError(f"model path {given} ({p}) does not exist; expected {ACCEPTED}")
    if p.is_dir():
        if is_bundle(p):
            logger.info("model: bundle folder %s", p)
            return ResolvedModel(p, None, "bundle")
        if p.name == "models" and is_bundle(p.parent):
            logger.info("model: bundle folder %s (from its models/ folder)", p.parent)
            return ResolvedModel(p.parent, None, "bundle")
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
        if len(entries) == 1 and _depth < _MAX_DEPTH:
            return resolve_model(entries[0], _depth + 1)
        raise ModelPathError(f"model path {given}: folder is not a bundle (no configs/{CONFIG_NAME}.json and "
                             f"configs/metadata.json); expected {ACCEPTED}")
    if _torchscript_with_configs(p):
        logger.info("model: TorchScript %s", p)
        return ResolvedModel(p, TorchScriptModel(str(p)), "torchscript")
    if zipfile.is_zipfile(p) or p.suffix in (".pt", ".pth"):
        return _checkpoint_model(p)
    raise ModelPathError(f"model path {given}: not a bundle folder, checkpoint or TorchScript file; "
                         f"expected {ACCEPTED}")
