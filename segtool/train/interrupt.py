"""Stop a training run cleanly on Ctrl-C or SIGTERM: finish the step, write a checkpoint, return."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """Set by the first Ctrl-C or SIGTERM; a second Ctrl-C stops at once.

    Use it as a context manager around the training loop and pass it as
    ``stop_requested`` to :func:`segtool.train.loop.train_model`: calling it
    says whether a stop was asked for. The handlers are only installed on the
    main thread (elsewhere the flag stays unset) and are restored on exit.

    Parameters
    ----------
    on_first : callable, optional
        Called once when the first signal arrives (to tell the user what
        happens next).
    """

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.signal: int | None = None
        self._on_first = on_first
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        if self._on_first is not None:
            self._on_first()

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
