"""Folder mode on Dask: one task per image, with the batch runner's guarantees.

:func:`run_on_cluster` is the Dask counterpart of the process pool in
:mod:`segtool.batch`: the same :class:`~segtool.batch.Task` objects, the same
per-input :func:`~segtool.batch.run_item` (so outputs are byte-identical to a
single-process run), the same pre-checks for ``--skip-existing`` and
``--overwrite`` (made here, on the client, before anything is submitted), and
the same :class:`~segtool.batch.ItemResult` per input.

What Dask adds:

- a worker that dies mid-image loses nothing: every task carries its own
  (small) copy of the task object, so the scheduler can re-run the
  unfinished ones on any other worker, or on the dead worker's replacement
  (up to Dask's ``distributed.scheduler.allowed-failures`` times per task, 3
  by default). Outputs are written by temp file + rename, so a killed task
  leaves no half-written result; only an image that kills every worker it
  lands on is reported as failed;
- paths are made absolute before they are sent, so workers started in
  another folder read and write the files the user named (results still
  report the input as typed);
- the number of tasks in flight follows the cluster as workers join or
  leave (a few per worker thread), so a screen of a million images never
  becomes a million futures at once, and workers that join an HPC run late
  are used;
- while many images remain, consecutive images are grouped into one task
  (up to :data:`MAX_IMAGES_PER_TASK`), so Dask's fixed cost per task (a few
  milliseconds of scheduler and network time, see SCALING.md) is paid once
  per group; near the end of the run tasks shrink to single images so the
  last workers finish together. Results are still reported per image.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segtool.batch import ItemResult, Runner, RunOptions, Task, error_message, precheck_item, run_item
from segtool.distributed.cluster import worker_count
from segtool.outputs import OutputOptions, allowing_overwrite

__all__ = ["cluster_runner", "run_on_cluster", "run_items", "with_absolute_paths"]

#: Tasks in flight per worker thread: enough to hide the scheduler's round trip.
IN_FLIGHT_PER_THREAD = 4
#: Most images one task carries (taken only while plenty of images remain).
MAX_IMAGES_PER_TASK = 16
#: Seconds between asks to the scheduler for the current number of worker threads.
_RESIZE_EVERY = 2.0
#: Seconds to let running tasks finish after Ctrl-C before the cluster goes away.
_GRACE_SECONDS = 10.0


def with_absolute_paths(task: Task) -> Task:
    """A copy of a dataclass task with every relative ``Path`` field (and its :class:`OutputOptions` folder) made absolute.

    Examples
    --------
    >>> @dataclasses.dataclass
    ... class Example:
    ...     output_dir: Path | None
    >>> with_absolute_paths(Example(Path("out"))).output_dir.is_absolute()
    True
    >>> with_absolute_paths(Example(OutputOptions(Path("out")))).output_dir.folder.is_absolute()
    True
    """
    if not dataclasses.is_dataclass(task):
        return task
    values = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.init}
    changes = {
        name: value.absolute()
        for name, value in values.items()
        if isinstance(value, (Path, OutputOptions)) and value.absolute() != value
    }
    return dataclasses.replace(task, **changes) if changes else task


def _retry_safe(task: Task, *, skip_existing: bool = False) -> Task:
    """The task as workers run it: allowed to replace outputs that appear after the client's check.

    Every input's outputs are checked on the client before it is submitted
    (refused if they exist, unless ``--overwrite``). An output that exists when
    a worker runs the task was therefore written by an earlier attempt of this
    very task, on a worker that died before reporting back (or that finished
    part of a group of images); the retry must replace it, not fail on it.
    With ``skip_existing`` the task is left as it is: such an output (or one
    another process wrote) makes the input skipped, never replaced.
    """
    if skip_existing:
        return task
    return allowing_overwrite(task)


def cluster_runner(client: Any) -> Runner:
    """A :class:`~segtool.batch.Runner` that runs the inputs on ``client``'s cluster.

    Parameters
    ----------
    client : distributed.Client
        Connected Dask client.

    Returns
    -------
    runner : Runner
        For ``run_batch(..., runner=runner)``; see :func:`run_on_cluster`.
    """
    return functools.partial(run_on_cluster, client)


def run_on_cluster(
    client: Any,
    paths: Sequence[Path],
    task: Task,
    *,
    record: Callable[[ItemResult], None],
    options: RunOptions = RunOptions(),
) -> None:
    """Run ``task`` on every path on the cluster behind ``client``; report each result via ``record``.

    Parameters
    ----------
    client : distributed.Client
    paths : sequence of Path
        Inputs; they (and the output folder) must be visible to the workers
        under the same absolute paths (a shared file system on a real cluster).
    task : Task
        Picklable per-file work.
    record : callable
        Called with each :class:`ItemResult` as soon as it is known.
    options : RunOptions, optional
        As in :func:`segtool.batch.run_batch` (``jobs`` is not used: the
        cluster's workers are).

    Notes
    -----
    On ``KeyboardInterrupt`` the futures not yet started are cancelled and
    running ones get a few seconds to finish (so they can clean up after
    themselves) before the exception propagates; finished work keeps its
    outputs.
    """
    from distributed import as_completed

    run = _ClusterRun(client, task, record, options, completed=as_completed(), pending=list(reversed(paths)))
    try:
        run.submit_more()
        while run.running:
            run.collect(next(run.completed))
    except KeyboardInterrupt:
        _wind_down(client, list(run.running))
        raise


class _ClusterRun:
    """The state of one :func:`run_on_cluster`: inputs not yet submitted, futures running, the stop flag."""

    def __init__(self, client: Any, task: Task, record: Callable[[ItemResult], None], options: RunOptions, *,
                 completed: Any, pending: list[Path]) -> None:
        self.client, self.task, self.record, self.options = client, task, record, options
        self.remote_task = _retry_safe(with_absolute_paths(task), skip_existing=options.skip_existing)
        self.pending = pending  # in reverse: pop() from the end keeps the input order
        self.running: dict[Any, list[Path]] = {}
        self.completed = completed  # distributed.as_completed over the running futures
        self.stop = False
        self.window = 0
        self.resized = float("-inf")

    def current_window(self) -> int:
        if time.monotonic() - self.resized > _RESIZE_EVERY:
            # With on_error="stop" nothing waits in a worker's queue, so at most one
            # input per worker thread is started after the first failure.
            self.window = worker_count(self.client) * (1 if self.options.on_error == "stop" else IN_FLIGHT_PER_THREAD)
            self.resized = time.monotonic()
        return self.window

    def group_size(self) -> int:
        # Enough groups for every slot in flight, twice over, so the load stays
        # balanced; single images when stopping at the first failure.
        if self.options.on_error == "stop":
            return 1
        return max(1, min(MAX_IMAGES_PER_TASK, len(self.pending) // (2 * max(1, self.window))))

    def report(self, result: ItemResult) -> None:
        self.record(result)
        self.stop = self.stop or (result.status == "failed" and self.options.on_error == "stop")

    def submit(self, group: list[Path]) -> None:
        # pure=False: re-running a path must run it again, never reuse a cached result.
        future = self.client.submit(run_items, self.remote_task, [p.absolute() for p in group], self.options.debug,
                                    self.options.skip_existing, pure=False)
        self.running[future] = group
        self.completed.add(future)

    def submit_more(self) -> None:
        """Submit groups of inputs (pre-checked here, on the client) while the window has room."""
        options = self.options
        while self.pending and not self.stop and len(self.running) < self.current_window():
            group: list[Path] = []
            size = self.group_size()
            while self.pending and not self.stop and len(group) < size:
                path = self.pending.pop()
                early = precheck_item(self.task, path, skip_existing=options.skip_existing, overwrite=options.overwrite)
                if early is None:
                    group.append(path)
                    continue
                self.report(early)
            if group:
                self.submit(group)

    def collect(self, future: Any) -> None:
        """Report the results of a finished future, then submit more."""
        group = self.running.pop(future)
        try:
            results = future.result()
            for path, result in zip(group, results):
                result.input = str(path)  # as the user typed it
        except Exception as err:  # KilledWorker: the task took down every worker it ran on
            if self.options.debug:
                raise
            if len(group) > 1:
                # One image of the group may be the culprit: give each its own task,
                # so only that one is reported as failed.
                for path in group:
                    self.submit([path])
                future.release()
                return
            reason = f"worker process failed: {error_message(err)}"
            results = [ItemResult(str(path), "failed", error=reason) for path in group]
        future.release()
        for result in results:
            self.report(result)
        self.submit_more()


def run_items(task: Task, paths: Sequence[Path], debug: bool = False, skip_existing: bool = False) -> list[ItemResult]:
    """:func:`segtool.batch.run_item` on each path in turn (one Dask task for a group of images)."""
    return [run_item(task, path, debug, skip_existing=skip_existing) for path in paths]


def _wind_down(client: Any, futures: list) -> None:
    """Cancel what has not started; give running tasks a moment to finish their files."""
    from distributed import wait

    try:
        processing = client.processing()
        busy = {key for keys in processing.values() for key in keys}
        client.cancel([f for f in futures if f.key not in busy])
        wait([f for f in futures if f.key in busy], timeout=_GRACE_SECONDS)
    except Exception:  # Ctrl-C again, or the scheduler is gone: nothing more to save
        pass
