"""Which exception of a chain a failed run's last line shows.

MONAI wraps every failure of a bundle expression or component (``RuntimeError: Failed to evaluate ...``), and our
own messages wrap the errors of the libraries below (``torch.load``'s ``IndexError``, ``torch.save``'s
``basic_ios::clear``, PIL's ``AttributeError: '_idat'`` on a full disk). The line a user reads last should carry our
message, which names the file, config id or value and the reason; the whole chain stays in the traceback above it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["error_chain", "summary_error"]

_PACKAGE = Path(__file__).resolve().parent


def error_chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during (``__cause__``, else ``__context__``), outermost
    first."""
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
    """The exception a run's last line shows: the outermost one of ``err``'s chain raised in this package (our
    named message, not MONAI's wrapper around it nor the library error beneath it), else the innermost one."""
    chain = error_chain(err)
    return next((e for e in chain if _raised_here(e)), chain[-1])
