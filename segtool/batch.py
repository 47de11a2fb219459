"""Running one task over many input files without losing work.

Each command describes its per-file work as a :class:`Task`: the outputs it
will write for an input, and a ``run`` method that writes them and returns a
few figures (object count, threshold, ...). :func:`run_batch` applies it to
every input, sequentially or in worker processes, and turns each outcome into
an :class:`ItemResult`: a bad file becomes a ``failed`` result with a one-line
reason and the batch goes on (unless asked to stop), an input whose outputs all
exist is ``skipped`` with ``skip_existing``, and every result is handed to a
callback as soon as it is known, so the caller can print or log it.

Several processes may share one output folder (terminals, array jobs). Outputs
are never replaced without ``overwrite`` (:mod:`segtool.publish`); with
``skip_existing`` an output that another process writes while this one works
on the same input makes it ``skipped`` (reason :data:`WRITTEN_ELSEWHERE`), not
failed.

The module prints nothing: reporting belongs to the caller.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from segtool.errors import OutputExistsError, SegtoolError
from segtool.outputs import allowing_overwrite

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Task",
    "StagedTask",
    "ItemResult",
    "BatchSummary",
    "Runner",
    "RunOptions",
    "run_batch",
    "run_item",
    "precheck_item",
    "error_message",
    "item_task",
    "ALREADY_THERE",
    "WRITTEN_ELSEWHERE",
]

EXIT_OK = 0  #: every input succeeded or was skipped
EXIT_FAILED = 1  #: at least one input failed; the others were processed
EXIT_USAGE = 2  #: the command line itself was wrong (nothing was processed)
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  #: stopped by SIGTERM

#: ``reason`` of an input skipped because another process wrote its output while this one worked on it.
WRITTEN_ELSEWHERE = "written by another process"
#: ``reason`` of an input skipped because its outputs existed before it was started.
ALREADY_THERE = "outputs exist"


class Task(Protocol):
    """Per-file work of a command. Must be picklable to run with ``jobs > 1``."""

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        """Outputs ``run`` will write for ``path``, by kind (e.g. ``{"labels": ...}``)."""

    def run(self, path: Path) -> dict[str, Any]:
        """Do the work for ``path``, write the outputs, return JSON-safe figures."""


class StagedTask(Task, Protocol):
    """A :class:`Task` whose ``run`` is ``finish(infer(load(path)))``: the stages can then overlap.

    :func:`run_batch` runs such a task with :func:`segtool.pipeline.stream.run_staged`
    when it runs in this process: ``load`` (read, normalise) on a loader thread, ``infer``
    (the network) on the calling thread, ``finish`` (objects, writing) on
    ``finish_threads`` threads. Any stage may return
    :class:`segtool.pipeline.stream.Finished` with the figures to end early.
    """

    finish_threads: int

    def load(self, path: Path) -> Any:
        """Read and prepare one input."""

    def infer(self, state: Any) -> Any:
        """The network stage."""

    def finish(self, state: Any) -> dict[str, Any]:
        """Post-process, write the outputs, return the figures (as ``run`` does)."""


@dataclass
class ItemResult:
    """What happened to one input.

    Attributes
    ----------
    input : str
        The input path as given.
    status : {"done", "skipped", "failed"}
    outputs : dict of str to str
        Files written (or, when skipped, already there).
    figures : dict
        Numbers the task reported (object count, threshold, ...).
    error : str or None
        One-line reason when failed.
    seconds : float
        Wall time spent on this input.
    reason : str or None
        Why it was skipped: :data:`ALREADY_THERE` or :data:`WRITTEN_ELSEWHERE`.
    """

    input: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: input, status, outputs, error, seconds (a skip's reason), then the figures."""
        record = asdict(self)
        figures = record.pop("figures")
        if record["reason"] is None:
            del record["reason"]
        record["seconds"] = round(self.seconds, 4)
        record.update({k: v for k, v in figures.items() if k not in record})
        return record


@dataclass(frozen=True)
class RunOptions:
    """How :func:`run_batch` treats the inputs, passed whole to every schedule.

    Attributes
    ----------
    on_error : {"skip", "stop"}
        ``"skip"`` records a failed input and goes on; ``"stop"`` starts no new input after the first failure.
    skip_existing : bool
        Inputs whose planned outputs all exist are ``skipped`` (resume a run).
    overwrite : bool
        Replace existing outputs; otherwise an existing output fails the input before any work is done.
    jobs : int
        Worker processes; 1 runs in this process.
    debug : bool
        Let unexpected exceptions propagate with their traceback.

    Examples
    --------
    >>> RunOptions(on_error="stop", jobs=2)
    RunOptions(on_error='stop', skip_existing=False, overwrite=False, jobs=2, debug=False)
    """

    on_error: str = "skip"
    skip_existing: bool = False
    overwrite: bool = False
    jobs: int = 1
    debug: bool = False

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "stop"):
            raise ValueError(f"on_error must be 'skip' or 'stop', got {self.on_error!r}")

    @property
    def stops(self) -> bool:  # the first failure stops the batch
        return self.on_error == "stop"


class Runner(Protocol):
    """A schedule that runs a task over inputs, reporting each result via ``record``.

    Parameters
    ----------
    paths : sequence of Path
        Inputs, in the order results are preferred.
    task : Task
        The per-file work.
    record : callable
        Called with each :class:`ItemResult` as soon as it is known.
    options : RunOptions
        As in :func:`run_batch` (``jobs`` is the runner's own business).
    """

    def __call__(
        self,
        paths: Sequence[Path],
        task: Task,
        *,
        record: Callable[[ItemResult], None],
        options: RunOptions,
    ) -> None: ...


@dataclass
class BatchSummary:
    """Counts over a batch and the exit code they imply."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    not_started: int = 0
    results: list[ItemResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def add(self, result: ItemResult) -> None:
        self.results.append(result)
        setattr(self, result.status, getattr(self, result.status) + 1)


def _existing_outputs(task: Task, path: Path) -> tuple[dict[str, Path], list[Path]]:
    planned = task.planned_outputs(path)
    return planned, [p for p in planned.values() if p.exists()]


def run_item(task: Task, path: Path, debug: bool = False, *, skip_existing: bool = False) -> ItemResult:
    """Run ``task`` on one input, turning every error into a failed result.

    This is what each worker runs, in a process pool or under another :class:`Runner`.
    With ``skip_existing``, an input found partly done is redone (its existing
    outputs replaced), and an output that another process writes meanwhile
    makes the result ``skipped`` (:data:`WRITTEN_ELSEWHERE`).
    """
    start = time.perf_counter()
    try:
        return _done(task, path, item_task(task, path, skip_existing=skip_existing).run(path), start)
    except Exception as err:
        return _failure(path, err, start, debug, task=task, skip_existing=skip_existing)


def item_task(task: Task, path: Path, *, skip_existing: bool) -> Task:
    """``task``, or with ``skip_existing`` and some (not all) of ``path``'s outputs there, a copy allowed to replace them.

    A partly done input (a run killed between two of its outputs) is redone
    whole; outputs that appear later, written by another process, still turn
    the input into a skip (:func:`run_item`) when none existed at the start.
    """
    if not skip_existing:
        return task
    try:
        planned, existing = _existing_outputs(task, path)
    except SegtoolError:
        return task  # run() reports it
    if not existing or len(existing) == len(planned):
        return task
    return allowing_overwrite(task)  # a shallow copy: keeps what the task caches, unlike dataclasses.replace


def _done(task: Task, path: Path, figures: dict[str, Any], start: float) -> ItemResult:
    figures = dict(figures or {})
    outputs = {k: str(v) for k, v in figures.pop("_outputs", task.planned_outputs(path)).items()}
    return ItemResult(str(path), "done", outputs, figures, None, time.perf_counter() - start)


def _failure(path: Path, err: Exception, start: float, debug: bool, *, task: Task | None = None,
             skip_existing: bool = False) -> ItemResult:
    """The failed result for an exception raised while processing ``path`` (with ``skip_existing``, a race is a skip)."""
    if skip_existing and isinstance(err, OutputExistsError) and task is not None:
        try:
            outputs = {k: str(v) for k, v in task.planned_outputs(path).items()}
        except SegtoolError:
            outputs = {}
        return ItemResult(str(path), "skipped", outputs, seconds=time.perf_counter() - start, reason=WRITTEN_ELSEWHERE)
    if isinstance(err, SegtoolError):
        return ItemResult(str(path), "failed", error=error_message(err), seconds=time.perf_counter() - start)
    if isinstance(err, MemoryError):
        return ItemResult(str(path), "failed", error="out of memory", seconds=time.perf_counter() - start)
    if debug:  # a bug: keep the batch going, but say so plainly (or show it with --debug)
        raise err
    detail = traceback.format_exception_only(type(err), err)[-1].strip()
    return ItemResult(
        str(path),
        "failed",
        error=f"internal error ({detail}); this is a bug in segtool, rerun with --debug for the traceback",
        seconds=time.perf_counter() - start,
    )


def error_message(err: BaseException) -> str:
    """First line of an error's message (its type name when empty)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def precheck_item(task: Task, path: Path, *, skip_existing: bool, overwrite: bool) -> ItemResult | None:
    """Decide before any work whether ``path`` is skipped or must fail on its outputs.

    Returns None when the input is to be run.
    """
    try:
        planned, existing = _existing_outputs(task, path)
    except SegtoolError as err:
        return ItemResult(str(path), "failed", error=error_message(err))
    if not planned or not existing or overwrite:
        return None
    if skip_existing and len(existing) == len(planned):
        return ItemResult(str(path), "skipped", {k: str(v) for k, v in planned.items()}, reason=ALREADY_THERE)
    if skip_existing:
        return None  # partly done: redo it, replacing only what this run writes
    names = ", ".join(str(p) for p in existing)
    return ItemResult(str(path), "failed", error=f"output exists: {names}; use --overwrite or --skip-existing")


def run_batch(
    paths: Sequence[Path],
    task: Task,
    options: RunOptions = RunOptions(),
    *,
    on_result: Callable[[ItemResult], None] | None = None,
    runner: Runner | None = None,
    overlap_stages: bool = True,
) -> BatchSummary:
    """Apply ``task`` to every path and collect what happened.

    Parameters
    ----------
    paths : sequence of Path
        Input files, in the order results are preferred.
    task : Task
        The per-file work.
    options : RunOptions, optional
        After a failure stop or go on; skip or replace existing outputs; worker processes; debugging.
    on_result : callable, optional
        Called with each :class:`ItemResult` as soon as it is known.
    runner : Runner, optional
        Run the inputs with this schedule instead of the built-in ones
        (``options.jobs`` and ``overlap_stages`` are then ignored), for example
        one that submits each input to a cluster.
    overlap_stages : bool, optional
        With ``jobs=1`` and a :class:`StagedTask`, overlap reading, the
        network and writing of consecutive inputs (same outputs, same order
        of results); False runs each input start to end.

    Returns
    -------
    BatchSummary
        Also when interrupted: ``KeyboardInterrupt`` propagates after pending
        work is cancelled, and the summary so far is attached to it as
        ``err.summary``.
    """
    summary = BatchSummary()

    def record(result: ItemResult) -> None:
        summary.add(result)
        if on_result is not None:
            on_result(result)

    in_process = options.jobs <= 1 or len(paths) <= 1
    try:
        if runner is not None:
            runner(paths, task, record=record, options=options)
        elif in_process and overlap_stages and len(paths) > 1 and _is_staged(task):
            _run_streamed(paths, task, record, options)
        elif in_process:
            _run_sequential(paths, task, record, options)
        else:
            _run_parallel(paths, task, record, options)
    except KeyboardInterrupt as err:
        summary.not_started = len(paths) - len(summary.results)
        err.summary = summary  # type: ignore[attr-defined]
        raise
    summary.not_started = len(paths) - len(summary.results)
    return summary


def _run_sequential(paths, task, record, options: RunOptions) -> None:
    for path in paths:
        result = precheck_item(task, path, skip_existing=options.skip_existing, overwrite=options.overwrite) or run_item(
            task, path, options.debug, skip_existing=options.skip_existing
        )
        record(result)
        if result.status == "failed" and options.stops:
            break


def _is_staged(task: Task) -> bool:
    return all(callable(getattr(task, name, None)) for name in ("load", "infer", "finish"))


def _run_streamed(paths, task, record, options: RunOptions) -> None:
    """The sequential schedule with the stages of consecutive inputs overlapped (see :class:`StagedTask`)."""
    from segtool.pipeline.stream import Finished, run_staged

    failed = []
    skip_existing = options.skip_existing

    def failure(path, err, start):
        return _failure(path, err, start, options.debug, task=task, skip_existing=skip_existing)

    def guarded(stage):
        def run(state):
            path, start, value, own = state  # own: the task for this input (see item_task)
            try:
                value = getattr(own, stage)(value)
                if isinstance(value, Finished):
                    return Finished(_done(task, path, value.value, start))
            except Exception as err:
                return Finished(failure(path, err, start))
            return path, start, value, own

        return run

    def load(path):
        start = time.perf_counter()
        early = precheck_item(task, path, skip_existing=skip_existing, overwrite=options.overwrite)
        if early is not None:
            return Finished(early)
        return guarded("load")((path, start, path, item_task(task, path, skip_existing=skip_existing)))

    def finish(state):
        path, start, value, own = state
        try:
            return _done(task, path, own.finish(value), start)
        except Exception as err:
            return failure(path, err, start)

    def on_result(path, result):
        record(result)
        if result.status == "failed":
            failed.append(path)

    run_staged(
        paths,
        load=load,
        infer=guarded("infer"),
        finish=finish,
        on_result=on_result,
        should_stop=lambda: bool(failed) and options.stops,
        stops=lambda result: options.stops and result.status == "failed",
        finish_threads=max(1, int(getattr(task, "finish_threads", 1) or 1)),
    )


def _run_parallel(paths, task, record, options: RunOptions) -> None:
    """Run the inputs on ``options.jobs`` worker processes, one input per worker at a time.

    Each worker is a process of its own with its own pipe, so the parent knows
    which input every worker holds: a worker killed by the OS (the OOM killer's
    SIGKILL, say) fails exactly that input, in one line, and is replaced; the
    other workers and inputs carry on. (A ``ProcessPoolExecutor`` breaks as a
    whole when one worker dies and fails every input in flight.)
    """
    pending = list(paths)
    idle: list[_Worker] = []
    busy: dict[_Worker, Path] = {}
    stop = False
    try:
        while (pending and not stop) or busy:
            while pending and not stop and len(busy) < options.jobs:
                path = pending.pop(0)
                early = precheck_item(task, path, skip_existing=options.skip_existing, overwrite=options.overwrite)
                if early is not None:
                    record(early)
                    stop = stop or (early.status == "failed" and options.stops)
                    continue
                worker = idle.pop() if idle else _Worker(task, options.debug, options.skip_existing)
                worker.send(path)
                busy[worker] = path
            if not busy:
                continue
            for worker in _wait_any(busy):
                path = busy.pop(worker)
                result = worker.receive(path)
                if worker.alive:
                    idle.append(worker)
                record(result)
                stop = stop or (result.status == "failed" and options.stops)
    except BaseException:
        # Ctrl-C reaches the workers too (same process group); SIGTERM only the
        # parent. Either way the workers get SIGINT, so each one removes its
        # half-written outputs (io.atomic_output) before it exits.
        _stop_workers([*busy, *idle], interrupt=True)
        raise
    _stop_workers(idle, interrupt=False)


class _Worker:
    """One worker process running :func:`run_item` on the paths sent to it."""

    def __init__(self, task: Task, debug: bool, skip_existing: bool = False):
        # "spawn" keeps workers independent of the parent's threads (torch, BLAS), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, task, debug, skip_existing), daemon=True)
        self.process.start()
        child.close()
        self.alive = True

    def send(self, path: Path) -> None:
        self.conn.send(path)

    def receive(self, path: Path) -> ItemResult:
        """The result for ``path``, or a failed result saying how the worker died."""
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.alive = False
            self.process.join(timeout=5)
            return ItemResult(str(path), "failed", error=_death_message(self.process.exitcode))
        if kind == "raise":  # --debug: an unexpected error, re-raised here with its traceback text
            self.alive = False
            raise payload
        return payload

    def close(self, *, interrupt: bool) -> None:
        if interrupt and self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGINT)
        else:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
        self.process.join(timeout=10 if interrupt else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _wait_any(busy: dict[_Worker, Path]) -> list[_Worker]:
    """Workers with a result ready or that have died (their pipe then reads EOF)."""
    from multiprocessing.connection import wait as wait_ready

    by_handle = {}
    for worker in busy:
        by_handle[worker.conn] = worker
        by_handle[worker.process.sentinel] = worker
    ready = wait_ready(list(by_handle))
    return list(dict.fromkeys(by_handle[handle] for handle in ready))


def _stop_workers(workers, *, interrupt: bool) -> None:
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.close(interrupt=interrupt)


def _death_message(exitcode: int | None) -> str:
    """One line for a worker that died while processing an input.

    Examples
    --------
    >>> _death_message(-9)
    'worker process was killed by SIGKILL while processing this input (out of memory? see --max-memory)'
    """
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory? see --max-memory)" if -exitcode == signal.SIGKILL else ""
        return f"worker process was killed by {name} while processing this input{hint}"
    return f"worker process exited unexpectedly (exit code {exitcode}) while processing this input"


def _worker_main(conn, task: Task, debug: bool, skip_existing: bool = False) -> None:
    """Worker process: run the task on each path received until told to stop (None) or interrupted."""
    from segtool.quiet import quiet_libraries

    # The worker's own process: its library warnings and logs stay quiet for good (shown with --debug).
    with quiet_libraries(debug):
        try:
            while True:
                path = conn.recv()
                if path is None:
                    return
                try:
                    result = run_item(task, path, debug, skip_existing=skip_existing)
                except Exception as err:  # only with --debug: hand the error to the parent
                    detail = "".join(traceback.format_exception(type(err), err, err.__traceback__))
                    conn.send(("raise", _picklable(err, detail)))
                    return
                conn.send(("result", result))
        except (KeyboardInterrupt, EOFError, BrokenPipeError):
            return


def _picklable(err: BaseException, detail: str) -> BaseException:
    """``err`` if it survives pickling, else a RuntimeError carrying its traceback text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(detail)
