"""Command-line interface: a thin layer that parses options, calls the library and reports.

Each command lives in its own module and registers itself on :data:`segtool.cli.application.app`;
:func:`main` (the ``segtool`` console script) runs it.
"""

from __future__ import annotations

import logging
import signal
import sys

from segtool.batch import EXIT_TERMINATED
from segtool.cli.application import app

# Importing the command modules registers their commands on ``app``; the order here is the order in --help.
from segtool.cli import baseline, predict, train, export, evaluate, report, model  # noqa: E402,F401  isort:skip

__all__ = ["main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so the same clean-up runs; exit code 143."""

    exit_code = EXIT_TERMINATED


def _on_sigterm(signum, frame):
    raise Terminated()


def main() -> None:
    """Entry point of the ``segtool`` console script."""
    # tifffile logs recoverable oddities of damaged files; segtool reports such files itself, in one line.
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): stop quietly, as Unix tools do.
        sys.stderr.close()
        sys.exit(1)
