"""Docstring and ``__all__`` checker for every ``vmunetv2_monai`` module (issue 22, "Docs and habits").

One test per module, so a failure names the module. Each module must define ``__all__`` naming objects that exist
and every public function or class defined in it. Every function, class and public method listed in (or belonging
to a class listed in) ``__all__`` and defined in that module must have a docstring, and one with parameters other
than ``self``/``cls`` must have an ``Args:`` section naming each of them (for a class: in the class or ``__init__``
docstring; for a dataclass the fields may be listed under ``Attributes:`` instead). A module whose optional
dependency is missing (e.g. ``monailabel`` outside its environment) is skipped with the dependency's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

import vmunetv2_monai

_SECTION = re.compile(
    r"^\s*(Args|Arguments|Returns|Return|Raises|Yields|Examples?|Attributes|Notes?|See Also|Warnings?)::?\s*$"
)


def _module_names() -> list[str]:
    """Every module of the package, found on disk without importing it (a package that needs an optional
    dependency still lists its modules)."""

    def walk(path: list[str], prefix: str) -> Iterator[str]:
        for info in pkgutil.iter_modules(path, prefix):
            yield info.name
            if info.ispkg:
                folder = os.path.join(info.module_finder.path, info.name.rpartition(".")[2])
                yield from walk([folder], info.name + ".")

    return ["vmunetv2_monai", *sorted(walk(list(vmunetv2_monai.__path__), "vmunetv2_monai."))]


def _import(name: str) -> ModuleType:
    """Import ``name``; skip (naming the dependency) when an optional third-party dependency is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and not err.name.startswith("vmunetv2_monai"):
            pytest.skip(f"{name}: optional dependency {err.name!r} is not installed")
        raise


def _args_block(doc: str) -> str:
    """The text of the ``Args:`` section(s) of ``doc`` (up to the next section header)."""
    blocks, inside = [], False
    for line in doc.splitlines():
        header = _SECTION.match(line)
        if header:
            inside = header.group(1) in ("Args", "Arguments")
            continue
        if inside:
            blocks.append(line)
    return "\n".join(blocks)


def _attributes_block(doc: str) -> str:
    """The text of the ``Attributes:`` section of ``doc`` (a dataclass may list its fields there)."""
    return _args_block(doc.replace("Attributes:", "Args:"))


def _documented(name: str, block: str) -> bool:
    """Whether ``block`` has an entry ``name: ...`` (also ``*name``, ``name (type):`` or ``a, name, b:``)."""
    word = r"\*{0,2}\w+"
    entry = rf"^\s+(?:{word},\s*)*\*{{0,2}}{re.escape(name)}(?:,\s*{word})*\s*(?:\([^)]*\))?\s*:"
    return re.search(entry, block, flags=re.MULTILINE) is not None


def _parameters(fn: Callable) -> list[str]:
    """Parameter names of ``fn`` other than ``self`` and ``cls``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def _check_function(qualname: str, fn: Callable, problems: list[str], extra_doc: str = "") -> None:
    doc = inspect.cleandoc(fn.__doc__ or "")
    if not doc and not extra_doc:
        problems.append(f"{qualname}: no docstring")
        return
    params = _parameters(fn)
    if not params:
        return
    block = _args_block(doc) + "\n" + _args_block(extra_doc)
    if not block.strip():
        problems.append(f"{qualname}: parameters {params} but no Args: section")
        return
    missing = [p for p in params if not _documented(p, block)]
    if missing:
        problems.append(f"{qualname}: Args: does not name {missing}")


def _check_class(qualname: str, cls: type, problems: list[str]) -> None:
    doc = inspect.cleandoc(cls.__doc__ or "")
    if dataclasses.is_dataclass(cls):
        if not doc or doc.startswith(cls.__name__ + "("):  # the docstring dataclass writes itself
            problems.append(f"{qualname}: no docstring")
        else:
            block = _args_block(doc) + "\n" + _attributes_block(doc)
            missing = [f.name for f in dataclasses.fields(cls) if not _documented(f.name, block)]
            if missing:
                problems.append(f"{qualname}: Args:/Attributes: does not name fields {missing}")
    elif not doc:
        problems.append(f"{qualname}: no docstring")
    elif "__init__" in vars(cls):
        _check_function(qualname, vars(cls)["__init__"], problems, extra_doc=doc)
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, property):
            if not (value.fget and value.fget.__doc__):
                problems.append(f"{qualname}.{attr}: property without docstring")
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value):
            _check_function(f"{qualname}.{attr}", value, problems)


def _problems(module: ModuleType) -> list[str]:
    name = module.__name__
    problems = [] if module.__doc__ else [f"{name}: no module docstring"]
    if not hasattr(module, "__all__"):
        return [*problems, f"{name}: no __all__"]
    exported = list(module.__all__)
    problems += [f"{name}.__all__ names {n!r}, which does not exist" for n in exported if not hasattr(module, n)]
    for attr, obj in vars(module).items():
        defined_here = (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name
        if defined_here and not attr.startswith("_") and attr not in exported:
            problems.append(f"{name}.{attr}: public but not in __all__")
    for attr in exported:
        obj = getattr(module, attr, None)
        if getattr(obj, "__module__", None) != name:
            continue  # a re-export or a constant: checked where it is defined
        if inspect.isclass(obj):
            _check_class(f"{name}.{attr}", obj, problems)
        elif inspect.isfunction(obj):
            _check_function(f"{name}.{attr}", obj, problems)
    return problems


@pytest.mark.parametrize("module_name", _module_names())
def test_module_docstrings(module_name: str) -> None:
    problems = _problems(_import(module_name))
    assert not problems, f"{len(problems)} docstring/__all__ problem(s):\n  " + "\n  ".join(problems)
