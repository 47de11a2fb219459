"""Running a command's task over its inputs: expand them, connect to Dask if asked, run the batch, report, exit.

Exit codes:

* 0 — every input succeeded (or was skipped with ``--skip-existing``);
* 1 — at least one input failed (each reported on stderr, the rest processed);
* 2 — the command line itself was wrong;
* 130 / 143 — interrupted by Ctrl-C / SIGTERM (finished outputs are kept,
  nothing half-written is left behind).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from segtool.batch import EXIT_INTERRUPTED, EXIT_USAGE, BatchSummary, ItemResult, Task, run_batch
from segtool.cli.cluster_run import cluster_for_run, connect_for_run
from segtool.cli.messages import fail, stderr
from segtool.cli.options import BatchOptions, OnError
from segtool.cli.reporter import Reporter, open_manifest, print_summary, print_table, progress_bar
from segtool.cli.specs import expand_specs, shard_files
from segtool.errors import SegtoolError, first_line
from segtool.quiet import quiet_libraries

__all__ = ["run_files"]


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
    quiet = batch.quiet
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
        progress = progress_bar(err_console, quiet=quiet)
        emit = Reporter(progress, manifest=open_manifest(stack, batch.manifest), json_out=batch.json_out,
                        table_mode=not batch.json_out and sys.stdout.isatty(), shard=batch.shard)
        with progress:
            for spec, message in expanded.problems:
                result = ItemResult(spec, "failed", error=message)
                summary_problems.add(result)
                emit(result)
            if summary_problems.failed and OnError(batch.on_error) == OnError.stop:
                expanded.files = []
            emit.task_id = progress.add_task(verb, total=len(expanded.files)) if expanded.files else None
            runner = None
            if client is not None and not batch.big:
                from segtool.distributed.folder import cluster_runner

                runner = cluster_runner(client)
            try:
                summary = run_batch(expanded.files, task, batch.run, on_result=emit, runner=runner)
            except KeyboardInterrupt as interrupt:
                summary = getattr(interrupt, "summary", BatchSummary())
                code = getattr(interrupt, "exit_code", EXIT_INTERRUPTED)
                progress.stop()
                print_summary(err_console, summary, summary_problems, interrupted=True, note=note)
                raise typer.Exit(code) from None

    summary.failed += summary_problems.failed
    if emit.rows:
        print_table(emit.rows, columns)
    if not quiet:
        print_summary(err_console, summary, BatchSummary(), note=note)
    if not found and not summary_problems.failed:
        fail("no input files given")
    raise typer.Exit(summary.exit_code)
