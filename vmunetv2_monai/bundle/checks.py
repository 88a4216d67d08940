"""Checks of a bundle config's option values and of the ``monai.bundle run`` command line.

The option ids (names, types, choices and ranges) are described once, as data, by the JSON schema
``options.schema.json`` beside this module. The configs' ``check_options`` runs :func:`check_config` as the first
step of ``initialize``: it refuses command-line and ``ConfigWorkflow`` ids that no config defines, makes a failed
``python -m monai.bundle run`` end with one line naming its cause, and checks every option id the config defines
against the schema, so that a bad value stops the run before anything is built, with a message naming the id and
what it must be.
"""

from __future__ import annotations

import ast
import difflib
import functools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import install_summary_hook, summarising_excepthook

__all__ = [
    "SCHEMA_PATH", "check_batch_size", "check_cli", "check_config", "check_options", "check_workflow_ids", "config_ids",
    "option_schema", "running_parser", "unknown_overrides",
]

#: The JSON schema of the bundle's option ids.
SCHEMA_PATH = Path(__file__).resolve().with_name("options.schema.json")

#: ``monai.bundle run`` arguments that are not config ids.
_RUN_ARGS = frozenset({
    "run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
    "workflow_name", "workflow_type", "properties_path",
})


@functools.lru_cache(maxsize=1)
def option_schema() -> dict[str, Any]:
    """The JSON schema of the bundle's option ids (:data:`SCHEMA_PATH`), read once.

    Returns:
        the schema as a dict; its ``properties`` are the option ids in the order they are checked.
    """
    return json.loads(SCHEMA_PATH.read_text())


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@functools.lru_cache(maxsize=1)
def _validator_class() -> Any:
    """Draft 7 with stricter types: ``integer`` is an ``int`` (not ``1.0``), ``number`` excludes NaN and no number is
    a bool; an ``array`` may be a tuple (``image_size`` given in Python). Draft 7, not 2020-12: MONAI Label's
    environment has jsonschema 3.2 (pydicom-seg 0.4.1 pins < 4), and the schema uses nothing newer (its
    ``#/$defs/...`` references are plain JSON pointers)."""
    from jsonschema import Draft7Validator, validators

    checker = Draft7Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _, v: _is_number(v),
        "array": lambda _, v: isinstance(v, (list, tuple)),
    })
    return validators.extend(Draft7Validator, type_checker=checker)


def _message(name: str, value: object, rule: Mapping[str, Any]) -> str:
    """The error for a ``value`` of option ``name`` that breaks its schema ``rule``, naming the id and the rule."""
    if "enum" in rule:
        return f"unknown value {value!r} for '{name}': choose one of {', '.join(map(repr, rule['enum']))}"
    if rule.get("$ref") == "#/$defs/size":
        return (f"bad value {value!r} for '{name}': expected 2 whole numbers >= 1 (on the command line --{name} "
                f'"[128,128]") or one for every axis')
    kind = "a whole number" if rule.get("type") == "integer" else "a number"
    open_low = "exclusiveMinimum" in rule
    low = rule.get("exclusiveMinimum", rule.get("minimum"))
    high = rule.get("maximum")
    bound = f"{'(' if open_low else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
    return f"bad value {value!r} for '{name}': expected {kind} in {bound}"


def check_options(values: Mapping[str, Any]) -> bool:
    """Check option values against the bundle's schema (:func:`option_schema`); ids the schema does not describe
    pass.

    Args:
        values: option id -> parsed value (e.g. ``{"image_size": [128, 128], "intensity": "fixed"}``).

    Returns:
        True when every value fits.

    Raises:
        ValueError: for the first id (in the schema's order) whose value does not fit, naming the id, the value and
            what it must be (``unknown value 'resise' for 'spatial_mode': choose one of 'resize', 'patch'``).
    """
    schema = option_schema()
    bad = {error.absolute_path[0] for error in _validator_class()(schema).iter_errors(dict(values))
           if error.absolute_path}
    for name, rule in schema["properties"].items():
        if name in bad:
            raise ValueError(_message(name, values[name], rule))
    return True


def check_batch_size(batch_size: int, n_training: int) -> bool:
    """Check that a training run has a batch to train on.

    The training loader keeps a last partial batch unless it would hold one image (batch norms cannot train on it),
    so training runs zero iterations only when every batch would be such a single image.

    Args:
        batch_size: the config's ``batch_size``.
        n_training: the number of training images.

    Returns:
        True when training gets at least one batch.

    Raises:
        ValueError: naming ``batch_size`` when it is not a whole number >= 1 or leaves no batch to train on.
    """
    check_options({"batch_size": batch_size})
    full, rest = divmod(n_training, batch_size)
    if full + (rest > 1) == 0:
        raise ValueError(f"'batch_size' {batch_size} with {n_training} training image(s) leaves no batch to train on "
                         "(a last batch of one image is dropped): give more training images")
    return True


def config_ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0#c``), as ``monai.bundle`` overrides address them.

    Args:
        config: a config's content (dicts, lists and values).
        prefix: the id of ``config`` itself ("" for a whole config).

    Returns:
        the ids of every entry below ``config``.
    """
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
    """Override ids of a ``monai.bundle run`` command line that its configs do not define.

    Ids of every config beside the given ones count as known (one argument list may serve train, evaluate and
    inference). A nested id (``a#b``) is known when its parent (``a``) is, so new arguments can be added to an
    existing component.

    Args:
        args: the command line after ``run`` (``--config_file ... --epochs 1``).

    Returns:
        each unknown id with up to three close matches among the known top-level ids.
    """
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
    """Check the command line of a ``python -m monai.bundle run ...`` process (a no-op in any other process).

    Makes a failure of the process end with one line that names its cause (MONAI's wrapper line otherwise ends the
    output, with the real message far above it; :func:`~vmunetv2_monai.errors.install_summary_hook`).

    Args:
        argv: the process's arguments (default ``sys.argv``).

    Returns:
        True.

    Raises:
        ValueError: for override ids the configs do not define (``--epoch 1`` for ``--epochs``).
    """
    argv = list(sys.argv if argv is None else argv)
    if not install_summary_hook(argv):
        return True
    unknown = unknown_overrides(argv[2:])
    if unknown:
        lines = [f"--{k}" + (f" (did you mean {' or '.join(repr(m) for m in v)}?)" if v else "")
                 for k, v in unknown.items()]
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
    """The ``ConfigParser`` evaluating the calling config expression (the nearest one on the stack), or None.

    A config expression cannot see its parser; this is how a check reads config entries (raw, or parsed one by one)
    without instantiating the rest.

    Returns:
        the parser, or None outside a config expression.
    """
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner
        frame = frame.f_back
    return None


def check_workflow_ids() -> bool:
    """Refuse top-level ids of the running ``ConfigWorkflow`` that no config in its config folder defines.

    An override passed to ``monai.bundle.run(..., epoch=1)`` or ``ConfigWorkflow(..., epoch=1)`` (scripts, MONAI
    Label) is refused as ``--epoch 1`` is on the command line (see :func:`check_cli`), instead of being added to
    the config and ignored. Ids starting with ``_`` (``_meta_``) pass. A no-op for an expression that is not
    evaluated by a ``ConfigWorkflow`` (a plain ``ConfigParser``, whose files are not known).

    Returns:
        True.

    Raises:
        ValueError: naming the unknown ids and their close matches.
    """
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


def check_config(parser: Any = None) -> bool:
    """The bundle configs' ``check_options``: every check of a config, once, as the first step of ``initialize``.

    :func:`check_cli` (unknown command-line ids; the last-line error summary of a ``monai.bundle run`` process),
    :func:`check_workflow_ids` (unknown ``ConfigWorkflow`` ids), then :func:`check_options` on the parsed value of
    every option id of the schema that the config defines.

    Args:
        parser: the config's ``ConfigParser``; default: the one evaluating the calling config expression
            (``"check_options": "$vmunetv2_monai.bundle.checks.check_config()"``).

    Returns:
        True when every check passes.

    Raises:
        RuntimeError: without ``parser`` outside a config expression.
        ValueError: naming the first unknown id or bad option value.
    """
    parser = parser if parser is not None else running_parser()
    if parser is None:
        raise RuntimeError("check_config() without a parser must be called from a config expression")
    check_cli()
    check_workflow_ids()
    return check_options({name: parser.get_parsed_content(name) for name in option_schema()["properties"]
                          if name in parser})
