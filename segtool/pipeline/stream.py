"""Overlapped stages in one process: threads and bounded queues.

Two schedules, both generic (they know nothing of images or networks):

- :func:`run_staged` runs items through three stages, ``load`` (read and
  normalise, on a loader thread), ``infer`` (the network, on the calling
  thread) and ``finish`` (post-process and write, on a small pool), so that
  while the network works on item ``k`` the loader prepares ``k + 1`` and the
  pool finishes ``k - 1``. Results come back in input order, memory is
  bounded (at most ``read_ahead`` loaded items wait for the network and
  ``finish_threads + 1`` for the pool), and every item goes through exactly
  the same functions as a sequential run, so its outputs are byte-identical.
- :func:`prefetch` runs an iterator (the network's stream of finished rows,
  say) on a thread, a bounded number of items ahead of its consumer.

The heavy work in every stage (torch, NumPy, scikit-image, file I/O) releases
the GIL, so the threads really run side by side.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["Finished", "prefetch", "run_staged"]

_END = object()
_SKIPPED = object()  # a finish that did not run because the run was stopping


@dataclass(frozen=True)
class Finished:
    """Returned by a stage to end an item early: later stages are skipped and ``value`` is its result."""

    value: Any


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; True when it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def prefetch(iterable: Iterable[Any], *, depth: int = 1) -> Iterator[Any]:
    """Iterate ``iterable`` on a background thread, at most ``depth`` items ahead of the consumer.

    Exceptions raised by the iterable are re-raised in the consumer, at the
    position they occurred. Closing the returned generator (or dropping it)
    stops the thread after its current item.

    Examples
    --------
    >>> list(prefetch(iter(range(5)), depth=2))
    [0, 1, 2, 3, 4]
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if not _put(q, item, stop):
                    return
                del item  # not held while the next item is computed (a large array, say)
        except BaseException as err:  # handed to the consumer, which raises it
            _put(q, _Failed(err), stop)
            return
        _put(q, _END, stop)

    thread = threading.Thread(target=produce, name="segtool-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
            del item  # nor while waiting for the next one
    finally:
        stop.set()
        thread.join()


def run_staged(
    items: Iterable[Any],
    *,
    load: Callable[[Any], Any],
    infer: Callable[[Any], Any],
    finish: Callable[[Any], Any],
    on_result: Callable[[Any, Any], None],
    should_stop: Callable[[], bool] = lambda: False,
    stops: Callable[[Any], bool] = lambda result: False,
    read_ahead: int = 1,
    finish_threads: int = 1,
) -> None:
    """Run every item through ``load`` -> ``infer`` -> ``finish`` with the stages overlapped.

    Parameters
    ----------
    items : iterable
        Inputs, e.g. paths.
    load, infer, finish : callable
        One argument each: the item, then the previous stage's return value.
        A stage that returns :class:`Finished` ends the item there. ``load``
        runs on a loader thread, ``infer`` on the calling thread (where a
        GPU context or torch's thread pool lives), ``finish`` on a pool of
        ``finish_threads``. Stages must turn expected errors into results
        (an exception escaping a stage stops the run and is re-raised here).
    on_result : callable
        ``on_result(item, result)``, called on the calling thread, in input
        order, as soon as each item's result is known.
    should_stop : callable, optional
        Checked before an item is loaded, inferred or finished; once it
        returns True no further item starts (those already finished are
        still reported; later ones are dropped unreported).
    stops : callable, optional
        ``stops(result)`` True (a failure under "stop on error", say) means
        no item after this one starts its next stage; checked where the
        result is made, so with one finish thread no later item is finished
        (with several, items being finished at the same moment still are).
    read_ahead : int, optional
        Loaded items waiting for ``infer``.
    finish_threads : int, optional
        Items post-processed at the same time.

    Raises
    ------
    KeyboardInterrupt
        Propagated after the loader stops and the items being finished are
        completed (so no output is left half-written) and reported.
    """
    stop = threading.Event()
    halt = _Halt()
    loaded: queue.Queue = queue.Queue(maxsize=max(1, int(read_ahead)))
    finish_threads = max(1, int(finish_threads))

    def finish_one(index: int, state: Any) -> Any:
        if stop.is_set() or halt.passed(index) or should_stop():
            return _SKIPPED
        result = finish(state)
        if stops(_value(result)):
            halt.at(index)
        return result

    pending: deque[tuple[Any, Future | Finished]] = deque()
    thread = threading.Thread(target=_load_items, args=(items, load, loaded, stop, halt, should_stop),
                              name="segtool-loader", daemon=True)
    pool = ThreadPoolExecutor(max_workers=finish_threads, thread_name_prefix="segtool-finish")
    thread.start()
    try:
        while True:
            entry = loaded.get()
            if entry is _END:
                break
            index, item, state = entry
            del entry  # the loaded state is freed once ``infer`` has replaced it, not at the next item
            if isinstance(state, _Failed):
                raise state.error
            if halt.passed(index):
                break
            if not isinstance(state, Finished):
                if should_stop():
                    break
                state = infer(state)
            if isinstance(state, Finished):
                if stops(state.value):
                    halt.at(index)
                pending.append((item, state))
            else:
                pending.append((item, pool.submit(finish_one, index, state)))
            # In-order reporting; at most finish_threads + 1 items wait in the pool.
            while pending and (isinstance(pending[0][1], Finished) or pending[0][1].done()
                               or len(pending) > finish_threads):
                _emit_oldest(pending, on_result)
        while pending:
            _emit_oldest(pending, on_result)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _report_completed(pending, on_result)
        raise
    finally:
        stop.set()
        pool.shutdown(wait=True)
        thread.join()


class _Halt:
    """The index of the first item whose result asked for no further items, shared by the threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._after = float("inf")

    def at(self, index: int) -> None:
        with self._lock:
            self._after = min(self._after, index)

    def passed(self, index: int) -> bool:
        """True for an item after the halting one: it does not start its next stage."""
        return index > self._after


def _load_items(items: Iterable[Any], load: Callable[[Any], Any], loaded: queue.Queue, stop: threading.Event,
                halt: _Halt, should_stop: Callable[[], bool]) -> None:
    """The loader thread: ``(index, item, load(item))`` into ``loaded``, then ``_END`` (or the error)."""
    try:
        for index, item in enumerate(items):
            if stop.is_set() or halt.passed(index) or should_stop():
                break
            if not _put(loaded, (index, item, load(item)), stop):
                return
    except BaseException as err:
        _put(loaded, (None, None, _Failed(err)), stop)
        return
    _put(loaded, _END, stop)


def _value(result: Any) -> Any:
    """A stage's result, unwrapped from :class:`Finished`."""
    return result.value if isinstance(result, Finished) else result


def _emit_oldest(pending: deque, on_result: Callable[[Any, Any], None]) -> None:
    """Report the oldest pending item, waiting for its finish if need be (a skipped finish is not reported)."""
    item, outcome = pending.popleft()
    result = outcome.value if isinstance(outcome, Finished) else outcome.result()
    if result is not _SKIPPED:
        on_result(item, _value(result))


def _report_completed(pending: deque, on_result: Callable[[Any, Any], None]) -> None:
    """After an interruption (the pool shut down): report, in order, the pending items that did complete."""
    while pending:
        item, outcome = pending.popleft()
        if isinstance(outcome, Finished):
            on_result(item, outcome.value)
        elif outcome.done() and not outcome.cancelled() and outcome.exception() is None:
            result = outcome.result()
            if result is not _SKIPPED:
                on_result(item, _value(result))

