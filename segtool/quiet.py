"""Keeping library warnings and log records off the user's stderr.

segtool reports every failed input in one line. The libraries it uses have
their own voices: tifffile logs what it finds odd in a damaged file, Dask's
scheduler and workers log their housekeeping, PyTorch and NumPy raise Python
warnings. None of that should reach a user's terminal raw.

Two tools:

* :func:`collect_records` captures one logger's records while a block runs
  (the readers in :mod:`segtool.io` use it around tifffile, so that what
  tifffile says about a file can be folded into that file's error message);
  the records are passed on at DEBUG level on the ``segtool`` logger.
* :func:`quiet_libraries` is what a command runs under: library warnings and
  records are dropped, or shown on stderr (with ``segtool``'s DEBUG records)
  when ``debug`` is true. Worker processes call it once at start.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import warnings
from collections.abc import Iterator

__all__ = ["LIBRARY_LOGGERS", "collect_records", "quiet_libraries"]

#: Loggers switched off in normal runs: libraries that bring their own handlers
#: (so a null handler on the root does not silence them). tifffile is not among
#: them: its records must still reach :func:`collect_records`.
LIBRARY_LOGGERS = ("distributed", "dask", "bokeh", "tornado", "asyncio", "torch")

_LOG = logging.getLogger("segtool")
# The list of messages being collected in this context (thread/task), or None.
_COLLECTING: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("segtool_collecting", default=None)


class _Collector(logging.Filter):
    """Logger filter: while a collection is active in this context, keep the message and drop the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        notes = _COLLECTING.get()
        if notes is None:
            return True
        notes.append(record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else record.levelname)
        return False


_COLLECTOR = _Collector()


@contextlib.contextmanager
def collect_records(name: str) -> Iterator[list[str]]:
    """Collect the messages logger ``name`` emits in this block instead of printing them.

    Yields the list the first line of each message is appended to. On exit
    each is logged again at DEBUG on the ``segtool`` logger (shown with
    ``--debug``). Other threads' records pass through unchanged.

    Examples
    --------
    >>> with collect_records("tifffile") as notes:
    ...     logging.getLogger("tifffile").warning("odd tag\\nmore")
    >>> notes
    ['odd tag']
    """
    logger = logging.getLogger(name)
    # Adding the same filter object again is a no-op; it lets records through
    # whenever no collection is active, so it can stay in place.
    logger.addFilter(_COLLECTOR)
    notes: list[str] = []
    token = _COLLECTING.set(notes)
    try:
        yield notes
    finally:
        _COLLECTING.reset(token)
        for note in notes:
            _LOG.debug("%s: %s", name, note)


@contextlib.contextmanager
def quiet_libraries(debug: bool = False) -> Iterator[None]:
    """Run a command with library warnings and log records off stderr (on stderr with ``debug``).

    Without ``debug``: Python warnings are ignored, the root logger gets a
    null handler (so Python's last-resort handler prints nothing) and the
    loggers in :data:`LIBRARY_LOGGERS` are switched off. With ``debug``:
    warnings print as usual, and log records of WARNING and above, plus
    segtool's own DEBUG records (what the readers collected from tifffile),
    go to stderr. Everything is restored on exit.
    """
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).disabled for name in LIBRARY_LOGGERS}
    saved_level = _LOG.level
    handler: logging.Handler
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("segtool: debug: %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        root.addHandler(handler)
        if debug:
            _LOG.setLevel(logging.DEBUG)
        else:
            for name in LIBRARY_LOGGERS:
                logging.getLogger(name).disabled = True
        try:
            yield
        finally:
            root.removeHandler(handler)
            _LOG.setLevel(saved_level)
            for name, disabled in saved.items():
                logging.getLogger(name).disabled = disabled
