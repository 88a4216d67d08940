"""Checks of bundle config values that name the config id, and of the ``monai.bundle run`` command line.

Referenced from the bundle configs (``check_options``, ``check_train_options``) so a bad value stops the run
before anything is built, with a message that names the id and what it must be.
"""

from __future__ import annotations

import ast
import difflib
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import install_summary_hook, summarising_excepthook

__all__ = [
    "check_batch_size", "check_choice", "check_cli", "check_range", "check_size", "check_workflow_ids", "config_ids",
    "unknown_overrides",
]

#: ``monai.bundle run`` arguments that are not config ids.
_RUN_ARGS = frozenset({
    "run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
    "workflow_name", "workflow_type", "properties_path",
})


def check_choice(name: str, value: object, choices: Sequence[object]) -> bool:
    """Raise a ``ValueError`` naming the config id and its allowed values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown value {value!r} for '{name}': choose one of {', '.join(map(repr, choices))}")
    return True


def check_range(
    name: str, value: object, low: float, high: float | None = None, integer: bool = False, open_low: bool = False
) -> bool:
    """Raise a ``ValueError`` naming the config id when ``value`` is not a number in ``[low, high]`` (``(low, high]``
    with ``open_low``; a whole number with ``integer``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = number and (value > low if open_low else value >= low) and (high is None or value <= high)
    if ok and integer and not isinstance(value, int):
        ok = False
    if not ok:
        kind = "a whole number" if integer else "a number"
        bound = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
        raise ValueError(f"bad value {value!r} for '{name}': expected {kind} in {bound}")
    return True


def check_size(name: str, value: object, dims: int = 2) -> bool:
    """Raise a ``ValueError`` naming the config id when ``value`` is not a list of ``dims`` whole numbers >= 1 (an
    image size such as ``[128,128]``) or one such number for every axis (``--image_size abc`` otherwise fails deep
    inside a transform)."""
    values = value if isinstance(value, (list, tuple)) and len(value) == dims else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        example = ",".join(["128"] * dims)
        raise ValueError(f"bad value {value!r} for '{name}': expected {dims} whole numbers >= 1 (on the command line "
                         f"--{name} \"[{example}]\") or one for every axis")
    return True


def check_batch_size(batch_size: int, n_training: int) -> bool:
    """The training loader keeps a last partial batch unless it would hold one image (batch norms cannot train on
    it), so training runs zero iterations only when every batch would be such a single image: raise a
    ``ValueError`` naming ``batch_size`` then instead of training nothing."""
    check_range("batch_size", batch_size, 1, integer=True)
    full, rest = divmod(n_training, batch_size)
    if full + (rest > 1) == 0:
        raise ValueError(f"'batch_size' {batch_size} with {n_training} training image(s) leaves no batch to train on "
                         "(a last batch of one image is dropped): give more training images")
    return True


def config_ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0#c``), as ``monai.bundle`` overrides address them."""
    ids: set[str] = set()
    if isinstance(config, Mapping):
        children = config.items()
    elif isinstance(config, list):
        children = enumerate(config)
    else:
        return ids
    for key, value in children:
        path = f"{prefix}#{key}" if prefix else str(key)
        ids.add(path)
        ids |= config_ids(value, path)
    return ids


def _parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs of a ``monai.bundle run`` command line."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            out[key.replace("-", "_")] = value  # fire reads --a-b as a_b
        i += 1
    return out


def _literal(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("[", "(")):
        return ast.literal_eval(value)
    return value


def _known_ids(files: Iterable[Path]) -> set[str]:
    """The ids that config ``files`` define, with the top-level ids that tracking settings add to a workflow
    (MONAI's default MLflow settings, and the ``configs`` of a settings file such as ``mlflow_tracking.json``)."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    known = set(DEFAULT_MLFLOW_SETTINGS["configs"])
    for f in sorted(files):
        config = ConfigParser.load_config_file(f)
        known |= config_ids(config)
        if isinstance(config, Mapping) and "handlers_id" in config and isinstance(config.get("configs"), Mapping):
            known |= set(config["configs"])
    return known


def unknown_overrides(args: Sequence[str]) -> dict[str, list[str]]:
    """Override ids of a ``monai.bundle run`` command line (``args`` after ``run``) that its configs do not define,
    each with close matches. Ids of every config beside the given ones count as known (one argument list may serve
    train, evaluate and inference). A nested id (``a#b``) is known when its parent (``a``) is, so new arguments
    can be added to an existing component."""
    from monai.bundle import ConfigParser
    from monai.utils import ensure_tuple

    overrides = _parse_overrides(args)
    if "args_file" in overrides:
        overrides = {**ConfigParser.load_config_file(overrides["args_file"]), **overrides}
    if "config_file" not in overrides:
        return {}
    given = _literal(overrides["config_file"])
    if isinstance(given, str) and "," in given and not Path(given).is_file():
        given = given.split(",")
    files = [Path(f) for f in ensure_tuple(given)]
    siblings = {f for folder in {p.parent for p in files} for f in folder.glob("*.json")}
    known = _known_ids(siblings | set(files))
    tops = sorted(k for k in known if "#" not in k)
    unknown = {}
    for key in overrides:
        if key in _RUN_ARGS or key == "args_file" or key.startswith("_meta_") or key in known:
            continue
        parent = key.rpartition("#")[0]
        if parent and parent in known:
            continue
        unknown[key] = difflib.get_close_matches(key, tops, n=3)
    return unknown


#: The last-line excepthook (kept under its earlier name).
_summarise_errors = summarising_excepthook


def check_cli(argv: Sequence[str] | None = None) -> bool:
    """When the process is ``python -m monai.bundle run ...``: raise a ``ValueError`` for override ids the configs
    do not define (``--epoch 1`` for ``--epochs``), and make a failure end with one line that names its cause
    (MONAI's wrapper line otherwise ends the output, with the real message far above it). A no-op otherwise."""
    argv = list(sys.argv if argv is None else argv)
    if not install_summary_hook(argv):
        return True
    unknown = unknown_overrides(argv[2:])
    if unknown:
        lines = [f"--{k}" + (f" (did you mean {' or '.join(repr(m) for m in v)}?)" if v else "") for k, v in unknown.items()]
        raise ValueError(f"unknown config id(s) on the command line, not defined in the config files: "
                         f"{'; '.join(lines)}")
    return True


def _running_workflow() -> Any:
    """The ``ConfigWorkflow`` whose parser is evaluating the calling config expression, or None.

    A config expression cannot see its parser, so the caller's stack is searched: the nearest ``ConfigParser`` method
    frame is the parser, and the ``ConfigWorkflow`` frame above it that owns that parser is the workflow."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    parser, frame = None, sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if parser is None and isinstance(owner, ConfigParser):
            parser = owner
        elif parser is not None and isinstance(owner, ConfigWorkflow) and owner.parser is parser:
            return owner
        frame = frame.f_back
    return None


def running_parser() -> Any:
    """The ``ConfigParser`` evaluating the calling config expression (the nearest one on the stack), or None: how
    a check reads a raw, unparsed config entry without instantiating it."""
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner
        frame = frame.f_back
    return None


def check_workflow_ids() -> bool:
    """Raise a ``ValueError`` for top-level ids of the running ``ConfigWorkflow`` that no config in its config
    folder defines: an override passed to ``monai.bundle.run(..., epoch=1)`` or ``ConfigWorkflow(..., epoch=1)``
    (scripts, MONAI Label) is refused as ``--epoch 1`` is on the command line (see :func:`check_cli`), instead of
    being added to the config and ignored. Ids starting with ``_`` (``_meta_``) pass. A no-op for an expression
    that is not evaluated by a ``ConfigWorkflow`` (a plain ``ConfigParser``, whose files are not known)."""
    workflow = _running_workflow()
    if workflow is None:
        return True
    folder = Path(workflow.config_root_path)
    known = _known_ids(folder.glob("*.json"))
    tops = sorted(k for k in known if "#" not in k)
    unknown = [k for k in workflow.parser.get() if not str(k).startswith("_") and k not in known]
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(key, tops, n=3)
            lines.append(repr(key) + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(f"unknown config id(s), not defined in the config files in {folder}: {'; '.join(lines)}")
    return True
