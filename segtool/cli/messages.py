"""What a command says on stderr: the one-line error format, and exits on errors.

Every message of segtool goes to stderr (stdout is for results), one line per
problem: ``segtool: error: <file>: <message>``.
"""

from __future__ import annotations

import sys
import traceback

import typer
from rich.console import Console

from segtool.errors import SegtoolError, first_line

__all__ = ["stderr", "error_line", "print_error", "fail", "exit_on_error"]


def stderr() -> Console:
    """A Rich console on the current ``sys.stderr``."""
    # Built per call, not at import: tests swap sys.stderr, and no state should outlive a command.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(where: str | None, message: str) -> str:
    """The one-line error format: ``segtool: error: <file>: <message>``.

    Examples
    --------
    >>> error_line("a.tif", "not an image")
    'segtool: error: a.tif: not an image'
    >>> error_line(None, "no input files given")
    'segtool: error: no input files given'
    """
    return f"segtool: error: {where}: {message}" if where else f"segtool: error: {message}"


def print_error(where: str | None, message: str) -> None:
    """Print one error line (see :func:`error_line`) on stderr."""
    print(error_line(where, message), file=sys.stderr, flush=True)


def fail(message: str, *, where: str | None = None, code: int = 1) -> None:
    """Print one error line on stderr and exit with ``code``."""
    print_error(where, message)
    raise typer.Exit(code)


def exit_on_error(debug: bool = False, *, where: str | None = None, code: int = 1):
    """Context manager for single-shot commands: a SegtoolError becomes one line and exit ``code`` (1).

    ``where`` (the file concerned) is put in front of the message.

    Examples
    --------
    ``with exit_on_error(debug, where=str(path)): model = load_model(path)``
    """
    return _ErrorExit(debug, where, code)


class _ErrorExit:
    def __init__(self, debug: bool, where: str | None = None, code: int = 1):
        self.debug = debug
        self.where = where
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, SegtoolError):
            return False
        if self.debug:
            traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        print_error(self.where, first_line(exc))
        raise typer.Exit(self.code)
