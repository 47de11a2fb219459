"""Options and reporting shared by every command that processes many files.

A command module declares its options with the ``Annotated`` aliases below,
gathers the batch options once into a :class:`BatchOptions` (:func:`batch_options`),
builds a picklable :class:`segtool.batch.Task` (see :mod:`segtool.tasks`), and
calls :func:`run_files`, which expands the inputs, runs the batch, prints
results and exits with the documented code:

* 0 — every input succeeded (or was skipped with ``--skip-existing``);
* 1 — at least one input failed (each reported on stderr, the rest processed);
* 2 — the command line itself was wrong;
* 130 / 143 — interrupted by Ctrl-C / SIGTERM (finished outputs are kept,
  nothing half-written is left behind).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from segtool.batch import EXIT_INTERRUPTED, EXIT_USAGE, BatchSummary, ItemResult, Task, run_batch
from segtool.cli.cluster_run import cluster_for_run, connect_for_run
from segtool.errors import SegtoolError, first_line
from segtool.inputs import ExpandedInputs, expand_inputs
from segtool.memory import FIXED_BYTES, WORKING_BYTES, MemoryBudget, parse_memory_limit
from segtool.quiet import quiet_libraries
from segtool.shard import Shard, parse_shard, select_shard

__all__ = [
    "BatchOptions",
    "parse_diameter",
    "batch_options",
    "Device",
    "stderr",
    "error_line",
    "print_error",
    "fail",
    "OnError",
    "Inputs",
    "OutputDir",
    "Overwrite",
    "SkipExisting",
    "Recursive",
    "JsonOut",
    "Manifest",
    "OnErrorOpt",
    "Jobs",
    "Quiet",
    "Debug",
    "Channel",
    "Plane",
    "SaveOverlay",
    "ClusterOpt",
    "BlockSize",
    "ZarrOut",
    "MaxMemory",
    "ShardOpt",
    "shard_files",
    "memory_budget",
    "expand_specs",
    "run_files",
    "exit_on_error",
]

PANEL_IO = "Inputs and outputs"
PANEL_BATCH = "Batch behaviour"


def stderr() -> Console:
    """A Rich console on the current ``sys.stderr``."""
    # Built per call, not at import: tests swap sys.stderr, and no state should outlive a command.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(where: str | None, message: str) -> str:
    """The one-line error format: ``segtool: error: <file>: <message>``."""
    return f"segtool: error: {where}: {message}" if where else f"segtool: error: {message}"


def print_error(where: str | None, message: str) -> None:
    """Print one error line (see :func:`error_line`) on stderr."""
    print(error_line(where, message), file=sys.stderr, flush=True)


def parse_diameter(value: str) -> float | None:
    """``--diameter``: None for ``auto`` (or 0, as in Cellpose), else a positive number of pixels; exit 2 otherwise."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if number == 0:
        return None
    if not (math.isfinite(number) and number > 0):
        fail(f"--diameter must be 'auto' or a positive number of pixels, got {value!r}", code=EXIT_USAGE)
    return number


def fail(message: str, *, where: str | None = None, code: int = 1) -> None:
    """Print one error line on stderr and exit with ``code``."""
    print_error(where, message)
    raise typer.Exit(code)


class Precision(str, Enum):
    """Network arithmetic for ``train`` and ``predict`` (see :mod:`segtool.model.precision`)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class OnError(str, Enum):
    skip = "skip"
    stop = "stop"


Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Image files, folders, glob patterns (quote them), or '-' to read paths from stdin, one per line.",
        show_default=False,
    ),
]
OutputDir = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Folder for the results (created if missing). Default: beside each input.",
        rich_help_panel=PANEL_IO,
        file_okay=False,
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing results.", rich_help_panel=PANEL_IO)]
SkipExisting = Annotated[
    bool,
    typer.Option(
        "--skip-existing",
        help="Skip inputs whose results all exist already (resume an interrupted run).",
        rich_help_panel=PANEL_BATCH,
    ),
]
Recursive = Annotated[
    bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.", rich_help_panel=PANEL_IO)
]
JsonOut = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON object per input on stdout (and nothing else).", rich_help_panel=PANEL_IO),
]
Manifest = Annotated[
    Optional[Path],
    typer.Option(
        "--manifest",
        help="Append one JSON line per input to this file as each finishes.",
        rich_help_panel=PANEL_BATCH,
        dir_okay=False,
    ),
]
OnErrorOpt = Annotated[
    OnError,
    typer.Option(
        "--on-error",
        help="On a bad input: 'skip' reports it and goes on; 'stop' starts no further input.",
        rich_help_panel=PANEL_BATCH,
        case_sensitive=False,
    ),
]
Jobs = Annotated[
    int, typer.Option("--jobs", "-j", min=1, help="Process this many images in parallel (processes).", rich_help_panel=PANEL_BATCH)
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr; errors still shown.", rich_help_panel=PANEL_BATCH)]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback of unexpected errors.", rich_help_panel=PANEL_BATCH)]
Channel = Annotated[
    Optional[int],
    typer.Option(
        "--channel",
        "-c",
        min=0,
        help="Channel of a multi-channel image to use (0-based). Default: RGB is averaged; other multi-channel images need it.",
        rich_help_panel=PANEL_IO,
    ),
]
Plane = Annotated[
    Optional[int],
    typer.Option("--plane", min=0, help="Plane of a Z or T stack to use (0-based); stacks need it.", rich_help_panel=PANEL_IO),
]

SaveOverlay = Annotated[
    bool,
    typer.Option(
        "--save-overlay",
        help="Also write outlines drawn on the image (<stem>_overlay.png).",
        rich_help_panel="Extra outputs",
    ),
]


PANEL_DISTRIBUTED = "Dask cluster (pip install 'segtool[distributed]')"

ClusterOpt = Annotated[
    Optional[str],
    typer.Option(
        "--cluster",
        help="Run on Dask: 'local' or 'local:N' (N worker processes on this machine), a scheduler address "
        "tcp://HOST:PORT, or a scheduler file. One task per image (baseline and predict: per block with --block-size).",
        rich_help_panel=PANEL_DISTRIBUTED,
        show_default=False,
    ),
]
BlockSize = Annotated[
    Optional[int],
    typer.Option(
        "--block-size",
        min=64,
        help="Big-image mode: read each image lazily and process it in blocks of this many pixels a side on the "
        "cluster (--cluster, default 'local'); labels are written as tiled BigTIFF, or OME-Zarr with --zarr. "
        "Zarr inputs need it.",
        rich_help_panel=PANEL_DISTRIBUTED,
        show_default=False,
    ),
]
ZarrOut = Annotated[
    bool,
    typer.Option(
        "--zarr",
        help="Big-image mode: write labels as OME-Zarr (<stem>_labels.ome.zarr, written by the workers in "
        "parallel) instead of tiled BigTIFF.",
        rich_help_panel=PANEL_DISTRIBUTED,
    ),
]


def _shard(value: str | None) -> Shard | None:
    try:
        return None if value is None else parse_shard(value)
    except SegtoolError as err:
        raise typer.BadParameter(first_line(err)) from None


ShardOpt = Annotated[
    Optional[str],
    typer.Option(
        "--shard",
        metavar="K/N",
        callback=_shard,
        help="Take only part K of N of the inputs (K = 1..N), for array jobs and parallel shells: N processes "
        "with K = 1..N take every input exactly once (split by a hash of each path relative to the folder given).",
        rich_help_panel=PANEL_BATCH,
        show_default=False,
    ),
]


class Device(str, Enum):
    """Where a network runs (``--device``): auto picks CUDA, then Apple MPS, then the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


MaxMemory = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        help="Refuse images that would need more memory than this (e.g. 8G, 512M, 60%, none), judged from the "
        "file's header before reading. Default: 75% of the available memory, shared among --jobs workers.",
        rich_help_panel=PANEL_BATCH,
        show_default=False,
    ),
]


@dataclass(frozen=True)
class BatchOptions:
    """The options every many-file command shares, parsed once and passed whole.

    Field names are the command functions' parameter names, so
    :func:`batch_options` can collect them; a command without an option (say
    ``export`` has no ``--block-size``) keeps the default.
    """

    output: Path | None = None  # -o: folder for the results (None: beside each input)
    recursive: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    json_out: bool = False
    manifest: Path | None = None
    on_error: OnError = OnError.skip
    jobs: int = 1
    max_memory: str | None = None
    cluster: str | None = None
    block_size: int | None = None  # big-image mode (Dask blocks) when set
    zarr: bool = False
    quiet: bool = False
    debug: bool = False
    shard: Shard | None = None  # --shard K/N: this process's part of the inputs

    @property
    def big(self) -> bool:
        """Whether big-image mode (``--block-size``) was asked for."""
        return self.block_size is not None


def batch_options(ctx: typer.Context) -> BatchOptions:
    """The :class:`BatchOptions` of the running command, from the parameters Typer parsed."""
    names = {field.name for field in fields(BatchOptions)}
    return BatchOptions(**{name: value for name, value in ctx.params.items() if name in names})


def memory_budget(
    text: str | None, command: str, *, jobs: int = 1, way_out: str = "", streamed_above: int | None = None
) -> MemoryBudget:
    """The memory guard of ``command`` from a ``--max-memory`` value; exit 2 when the value is not a size.

    ``command`` is a key of :data:`segtool.memory.WORKING_BYTES`.
    """
    try:
        limit = parse_memory_limit(text, jobs=jobs)
    except SegtoolError as err:
        fail(first_line(err), code=EXIT_USAGE)
    return MemoryBudget(
        limit=limit,
        bytes_per_pixel=WORKING_BYTES[command],
        command=command.split()[0],
        way_out=way_out,
        streamed_above=streamed_above,
        fixed_bytes=FIXED_BYTES.get(command, 0.0),
    )


def _read_stdin_lines() -> list[str] | None:
    if sys.stdin is None or sys.stdin.closed:
        return None
    try:
        if sys.stdin.isatty():
            return None
    except (AttributeError, ValueError):
        pass
    return sys.stdin.read().splitlines()


def expand_specs(specs: Sequence[str], *, kind: str = "image", recursive: bool = False) -> ExpandedInputs:
    """Expand the input specs of a command; ``-`` reads more paths from stdin, one per line."""
    stdin_lines = _read_stdin_lines() if "-" in specs else None
    return expand_inputs(specs, recursive=recursive, kind=kind, stdin_lines=stdin_lines)


def shard_files(files: Sequence[Path], specs: Sequence[str], shard: Shard | None) -> list[Path]:
    """The expanded inputs ``files`` that ``--shard`` gives this process (keys relative to the folders in ``specs``)."""
    if shard is None:
        return list(files)
    roots = [Path(spec).expanduser() for spec in specs if spec != "-" and Path(spec).expanduser().is_dir()]
    return select_shard(files, shard, roots=roots)


def run_files(
    specs: Sequence[str],
    task: Task,
    batch: BatchOptions,
    *,
    kind: str = "image",
    columns: Sequence[tuple[str, Callable[[ItemResult], Any]]] = (),
    verb: str = "Processing",
) -> BatchSummary:
    """Expand ``specs``, run ``task`` on each file, report, and exit with the batch's code.

    Results go to stdout: one JSON line per input with ``--json``; otherwise a
    table when stdout is a terminal, or the main output path per line when it
    is piped (so ``segtool baseline imgs/ | segtool export - ...`` works).
    Errors go to stderr as ``segtool: error: <file>: <reason>``, progress and
    the final summary too (unless ``quiet``).

    With ``batch.cluster`` (a ``--cluster`` value) the inputs run as one task
    each on that Dask cluster. In big-image mode (``batch.block_size``) they
    run one after the other in this process, each spread over the cluster
    (``local`` when no ``--cluster`` is given) block by block.

    Raises
    ------
    typer.Exit
        Always, with the batch's exit code.
    """
    on_error = OnError(batch.on_error)
    quiet, json_out, manifest = batch.quiet, batch.json_out, batch.manifest
    try:
        cluster_spec = cluster_for_run(batch.cluster, big=batch.big, jobs=batch.jobs)
    except SegtoolError as err:
        fail(first_line(err), code=EXIT_USAGE)
    expanded = expand_specs(specs, recursive=batch.recursive, kind=kind)
    found = len(expanded.files)
    expanded.files = shard_files(expanded.files, specs, batch.shard)
    # Which part ran, of how many inputs: the summaries of the N processes add up.
    note = f"shard {batch.shard} ({len(expanded.files)} of {found} inputs): " if batch.shard else ""
    err_console = stderr()
    summary_problems = BatchSummary()

    with ExitStack() as stack:
        # Library warnings and log records stay off stderr (shown with --debug).
        stack.enter_context(quiet_libraries(batch.debug))
        client = None
        # inputs are checked first: no waiting on a scheduler when none of them exists (each fails in one line)
        if cluster_spec is not None and any(Path(f).exists() for f in expanded.files):
            try:
                client = connect_for_run(stack, cluster_spec, quiet=quiet)
            except SegtoolError as err:
                fail(first_line(err), code=EXIT_USAGE)
        progress = _progress_bar(err_console, quiet=quiet)
        emit = _Reporter(progress, manifest=_open_manifest(stack, manifest), json_out=json_out,
                         table_mode=not json_out and sys.stdout.isatty(), shard=batch.shard)
        with progress:
            for spec, message in expanded.problems:
                result = ItemResult(spec, "failed", error=message)
                summary_problems.add(result)
                emit(result)
            if summary_problems.failed and on_error == OnError.stop:
                expanded.files = []
            emit.task_id = progress.add_task(verb, total=len(expanded.files)) if expanded.files else None
            runner = None
            if client is not None and not batch.big:
                from segtool.distributed.folder import cluster_runner

                runner = cluster_runner(client)
            try:
                summary = run_batch(
                    expanded.files,
                    task,
                    on_error=on_error.value,
                    skip_existing=batch.skip_existing,
                    overwrite=batch.overwrite,
                    jobs=batch.jobs,
                    on_result=emit,
                    debug=batch.debug,
                    runner=runner,
                )
            except KeyboardInterrupt as interrupt:
                summary = getattr(interrupt, "summary", BatchSummary())
                code = getattr(interrupt, "exit_code", EXIT_INTERRUPTED)
                progress.stop()
                _print_summary(err_console, summary, summary_problems, interrupted=True, note=note)
                raise typer.Exit(code) from None

    summary.failed += summary_problems.failed
    if emit.rows:
        _print_table(emit.rows, columns)
    if not quiet:
        _print_summary(err_console, summary, BatchSummary(), note=note)
    if not found and not summary_problems.failed:
        fail("no input files given")
    raise typer.Exit(summary.exit_code)


def _open_manifest(stack: ExitStack, manifest: Path | None):
    """The ``--manifest`` file opened for appending (closed with ``stack``), or None; exit 2 when it cannot be."""
    if manifest is None:
        return None
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        return stack.enter_context(open(manifest, "a", encoding="utf-8"))
    except OSError as err:
        fail(f"cannot open manifest: {err.strerror or err}", where=str(manifest), code=EXIT_USAGE)


def _progress_bar(console: Console, *, quiet: bool) -> Progress:
    """The bar over the inputs, drawn on a terminal only (and never with ``--quiet``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


class _Reporter:
    """Where each input's result goes as soon as it is known.

    The manifest gets its JSON line (with ``"shard": "K/N"`` under ``--shard``);
    a failure gets its error line on stderr; stdout gets the JSON line
    (``--json``), or every output path, one per line, when piped, or nothing
    yet on a terminal (``rows`` become the table at the end); the progress bar
    advances.
    """

    def __init__(self, progress: Progress, *, manifest, json_out: bool, table_mode: bool,
                 shard: Shard | None = None) -> None:
        self.shard = None if shard is None else str(shard)
        self.progress = progress
        self.manifest = manifest
        self.json_out = json_out
        self.table_mode = table_mode
        self.rows: list[ItemResult] = []
        self.task_id = None  # the bar's task, once the number of inputs is known

    def __call__(self, result: ItemResult) -> None:
        record = result.to_json()
        if self.shard is not None:
            record["shard"] = self.shard
        if self.manifest is not None:
            self.manifest.write(json.dumps(record) + "\n")
            self.manifest.flush()
        if result.status == "failed":
            self.progress.console.print(error_line(result.input, result.error or "failed"), markup=False, highlight=False)
        if result.figures.get("hint"):  # a result that looks wrong (e.g. baseline's contrast_hint)
            self.progress.console.print(f"segtool: note: {result.input}: {result.figures['hint']}", markup=False,
                                        highlight=False, soft_wrap=True)
        if self.json_out:
            print(json.dumps(record), flush=True)
        elif self.table_mode:
            self.rows.append(result)
        elif result.status != "failed" and result.outputs:
            print("\n".join(result.outputs.values()), flush=True)
        if self.task_id is not None:
            self.progress.advance(self.task_id)


def _print_table(rows: list[ItemResult], columns) -> None:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("input", overflow="fold")
    table.add_column("status")
    for header, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("output", overflow="fold")
    table.add_column("s", justify="right")
    for row in rows:
        cells = [row.input, row.status]
        for _, getter in columns:
            try:
                value = getter(row) if row.status == "done" else ""
            except (KeyError, TypeError, ValueError):
                value = ""
            cells.append("" if value is None else str(value))
        cells.append("\n".join(row.outputs.values()) if row.outputs else (row.error or ""))
        cells.append(f"{row.seconds:.2f}")
        table.add_row(*cells)
    Console(highlight=False).print(table)


def _print_summary(console: Console, summary: BatchSummary, extra: BatchSummary, *, interrupted: bool = False,
                   note: str = "") -> None:
    failed = summary.failed + extra.failed
    parts = [f"{summary.done} done", f"{summary.skipped} skipped", f"{failed} failed"]
    if summary.not_started:
        parts.append(f"{summary.not_started} not started")
    prefix = ("interrupted: " if interrupted else "") + note
    console.print(f"segtool: {prefix}{', '.join(parts)}", markup=False, highlight=False)


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
