"""Folder mode on Dask: one task per image, with the batch runner's guarantees.

:func:`run_on_cluster` is the Dask counterpart of the process pool in
:mod:`segtool.batch`: the same :class:`~segtool.batch.Task` objects, the same
per-input :func:`~segtool.batch.run_item` (so outputs are byte-identical to a
single-process run), the same pre-checks for ``--skip-existing`` and
``--overwrite`` (made here, on the client, before anything is submitted), and
the same :class:`~segtool.batch.ItemResult` per input.

What Dask adds:

- the task object is scattered to every worker once, so a worker keeps what
  the task loads lazily (the U-Net of ``segtool predict``) across the images it
  processes instead of reloading it per image;
- a worker that dies mid-image loses nothing: the scheduler re-runs its
  unfinished tasks on the other workers (up to Dask's
  ``distributed.scheduler.allowed-failures`` times per task, 3 by default),
  and outputs are written by temp file + rename, so a killed task leaves no
  half-written file; only an image that kills every worker it lands on is
  reported as failed;
- at most a few tasks per worker thread are in flight, so a screen of a
  million images never becomes a million futures at once (one per thread with
  ``on_error="stop"``, so a failure stops the run as soon as it can).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segtool.batch import ItemResult, Task, error_message, precheck_item, run_item
from segtool.distributed.cluster import worker_count

__all__ = ["run_on_cluster"]

#: Tasks in flight per worker thread: enough to hide the scheduler's round trip.
IN_FLIGHT_PER_THREAD = 4


def run_on_cluster(
    client: Any,
    paths: Sequence[Path],
    task: Task,
    *,
    record: Callable[[ItemResult], None],
    on_error: str = "skip",
    skip_existing: bool = False,
    overwrite: bool = False,
    debug: bool = False,
) -> None:
    """Run ``task`` on every path on the cluster behind ``client``; report each result via ``record``.

    Parameters
    ----------
    client : distributed.Client
    paths : sequence of Path
        Inputs; they (and the output folder) must be visible to the workers
        under the same paths (a shared file system on a real cluster).
    task : Task
        Picklable per-file work.
    record : callable
        Called with each :class:`ItemResult` as soon as it is known.
    on_error, skip_existing, overwrite, debug
        As in :func:`segtool.batch.run_batch`.

    Notes
    -----
    On ``KeyboardInterrupt`` the pending futures are cancelled before the
    exception propagates; work that already finished keeps its outputs.
    """
    from distributed import as_completed

    # Scatter once: every worker gets one copy of the task and keeps it (and
    # whatever it caches) for the whole run. hash=False: a fresh key per run.
    [task_future] = client.scatter([task], broadcast=True, hash=False)
    pending = list(paths)
    pending.reverse()  # pop() from the end keeps the input order
    # With on_error="stop" nothing waits in a worker's queue, so at most one
    # input per worker thread is started after the first failure.
    window = worker_count(client) * (1 if on_error == "stop" else IN_FLIGHT_PER_THREAD)
    running: dict[Any, Path] = {}
    completed = as_completed()
    stop = False

    def submit_more() -> None:
        nonlocal stop
        while pending and not stop and len(running) < window:
            path = pending.pop()
            early = precheck_item(task, path, skip_existing=skip_existing, overwrite=overwrite)
            if early is not None:
                record(early)
                stop = stop or (early.status == "failed" and on_error == "stop")
                continue
            # pure=False: re-running a path must run it again, never reuse a cached result.
            future = client.submit(run_item, task_future, path, debug, pure=False)
            running[future] = path
            completed.add(future)

    try:
        submit_more()
        while running:
            future = next(completed)
            path = running.pop(future)
            try:
                result = future.result()
            except Exception as err:  # KilledWorker: the image took down every worker it ran on
                if debug:
                    raise
                result = ItemResult(str(path), "failed", error=f"worker process failed: {error_message(err)}")
            future.release()
            record(result)
            stop = stop or (result.status == "failed" and on_error == "stop")
            submit_more()
    except KeyboardInterrupt:
        client.cancel(list(running))
        raise
    finally:
        client.cancel([task_future])
