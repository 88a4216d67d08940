"""Which exception of a chain a failed run's last line shows.

MONAI wraps every failure of a bundle expression or component (``RuntimeError: Failed to evaluate ...``), and our
own messages wrap the errors of the libraries below (``torch.load``'s ``IndexError``, ``torch.save``'s
``basic_ios::clear``, PIL's ``AttributeError: '_idat'`` on a full disk). The line a user reads last should carry our
message, which names the file, config id or value and the reason; the whole chain stays in the traceback above it.

A ``python -m monai.bundle run`` process gets that last line from :func:`install_summary_hook`, which the bundle's
``check_options`` installs (``check_cli``): the first of our code MONAI runs, after it has read the config files
and ``metadata.json``. A config or metadata file that is not valid JSON therefore fails inside MONAI before any
code of this package runs (MONAI 1.6 refuses handler classes outside ``logging`` in ``logging.conf``, the one file
it reads earlier); the package's own entry points check those files first (:func:`check_config_files`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "BundleFileError", "check_config_files", "error_chain", "install_summary_hook", "is_bundle_run",
    "summarising_excepthook", "summary_error", "summary_line",
]

_PACKAGE = Path(__file__).resolve().parent


def error_chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during (``__cause__``, else ``__context__``).

    Args:
        err: the exception a run ended with.

    Returns:
        The chain, outermost first (a suppressed context ends it; a cycle is cut).
    """
    chain = [err]
    while True:
        last = chain[-1]
        nxt = last.__cause__ or (None if last.__suppress_context__ else last.__context__)
        if nxt is None or nxt in chain:
            return chain
        chain.append(nxt)


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by a line of this package (its traceback's innermost frame)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def summary_error(err: BaseException) -> BaseException:
    """The exception a run's last line shows.

    Args:
        err: the exception a run ended with.

    Returns:
        The outermost exception of ``err``'s chain raised in this package (our named message, not MONAI's wrapper
        around it nor the library error beneath it), else the innermost one.
    """
    chain = error_chain(err)
    return next((e for e in chain if _raised_here(e)), chain[-1])


def summary_line(err: BaseException, max_lines: int = 25) -> str:
    """``<kind>: <message>`` of :func:`summary_error`.

    Args:
        err: the exception a run ended with.
        max_lines: the most message lines kept; more are replaced by a line saying how many were left out.
            Defaults to 25.

    Returns:
        The summary text.
    """
    root = summary_error(err)
    lines = str(root).strip().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines above)"]
    return f"{type(root).__name__}: " + "\n".join(lines)


def summarising_excepthook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """An ``excepthook`` that runs ``hook`` (the traceback, the whole chain), then writes :func:`summary_line`
    (our message naming the file, id or value) to stderr as the last line.

    Args:
        hook: the excepthook to run first, usually ``sys.excepthook``.

    Returns:
        The new excepthook (marked, so that :func:`install_summary_hook` installs it once).
    """

    def excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        hook(kind, err, tb)
        sys.stderr.write(f"vmunetv2_monai error: {summary_line(err)}\n")

    excepthook.vmunetv2_summary = True  # type: ignore[attr-defined]
    return excepthook


def is_bundle_run(argv: Sequence[str] | None = None) -> bool:
    """Whether the process is ``python -m monai.bundle run ...``.

    Args:
        argv: the command line to judge; None means ``sys.argv``.

    Returns:
        True for a ``monai.bundle run`` process.
    """
    argv = list(sys.argv if argv is None else argv)
    return bool(argv) and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py") and "run" in argv[1:2]


def install_summary_hook(argv: Sequence[str] | None = None) -> bool:
    """In a ``python -m monai.bundle run`` process, make an uncaught error end with :func:`summary_line` (once);
    any other process (a server, a test, a script) is left alone.

    Args:
        argv: the command line to judge; None means ``sys.argv``.

    Returns:
        Whether the hook is installed.
    """
    if not is_bundle_run(argv):
        return False
    if not getattr(sys.excepthook, "vmunetv2_summary", False):
        sys.excepthook = summarising_excepthook(sys.excepthook)
    return True


class BundleFileError(ValueError):
    """A bundle config or metadata file that cannot be read: the message names the file and the reason."""


def check_config_files(*paths: str | os.PathLike) -> bool:
    """Read each config or metadata file (JSON, or YAML by its suffix) as MONAI will, before MONAI reads them.

    For the package's entry points that start a bundle workflow (scripts, the MONAI Label app): MONAI's own error,
    a bare ``JSONDecodeError``, names only a line and column.

    Args:
        paths: the files to read.

    Returns:
        True (for config expressions).

    Raises:
        BundleFileError: naming the first file that is missing or not valid, and why (line and column for JSON).
    """
    import yaml
    from monai.bundle import ConfigParser

    for path in paths:
        try:
            ConfigParser.load_config_file(str(path))
        except FileNotFoundError as err:
            raise BundleFileError(f"cannot read {path}: the file does not exist") from err
        except json.JSONDecodeError as err:
            raise BundleFileError(f"cannot read {path}: not valid JSON ({err.msg} at line {err.lineno} column "
                                  f"{err.colno})") from err
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise BundleFileError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    return True
