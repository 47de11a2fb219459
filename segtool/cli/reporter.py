"""Where each input's result goes: the manifest, stdout (JSON lines, paths or a table), stderr, the progress bar.

Used by :func:`segtool.cli.run.run_files` for every many-file command, and by
``segtool evaluate`` for its per-pair errors and progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from segtool.batch import EXIT_USAGE, BatchSummary, ItemResult
from segtool.cli.messages import error_line, fail
from segtool.shard import Shard

__all__ = ["Reporter", "open_manifest", "print_summary", "print_table", "progress_bar"]


def open_manifest(stack: ExitStack, manifest: Path | None):
    """The ``--manifest`` file opened for appending (closed with ``stack``), or None; exit 2 when it cannot be."""
    if manifest is None:
        return None
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        return stack.enter_context(open(manifest, "a", encoding="utf-8"))
    except OSError as err:
        fail(f"cannot open manifest: {err.strerror or err}", where=str(manifest), code=EXIT_USAGE)


def progress_bar(console: Console, *, quiet: bool) -> Progress:
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


class Reporter:
    """Where each input's result goes as soon as it is known.

    The manifest gets its JSON line (with ``"shard": "K/N"`` under ``--shard``);
    a failure gets its error line on stderr; stdout gets the JSON line
    (``json_out``), or every output path, one per line, when piped, or nothing
    yet on a terminal (``table_mode``: ``rows`` become the table at the end),
    or nothing at all (``paths_out=False``: the command prints its own
    results); the progress bar advances.

    ``where`` gives the file an error line names (default: the input); it
    returns None when the error message names its file itself.
    """

    def __init__(self, progress: Progress, *, manifest=None, json_out: bool = False, table_mode: bool = False,
                 shard: Shard | None = None, paths_out: bool = True,
                 where: Callable[[ItemResult], str | None] | None = None) -> None:
        self.shard = None if shard is None else str(shard)
        self.progress = progress
        self.manifest = manifest
        self.json_out = json_out
        self.table_mode = table_mode
        self.paths_out = paths_out
        self.where = where or (lambda result: result.input)
        self.rows: list[ItemResult] = []
        self.task_id = None  # the bar's task, once the number of inputs is known

    def __call__(self, result: ItemResult) -> None:
        if self.manifest is not None or self.json_out:
            record = result.to_json()
            if self.shard is not None:
                record["shard"] = self.shard
        if self.manifest is not None:
            self.manifest.write(json.dumps(record) + "\n")
            self.manifest.flush()
        if result.status == "failed":
            self.progress.console.print(error_line(self.where(result), result.error or "failed"), markup=False,
                                        highlight=False)
        if result.figures.get("hint"):  # a result that looks wrong (e.g. baseline's contrast_hint)
            self.progress.console.print(f"segtool: note: {result.input}: {result.figures['hint']}", markup=False,
                                        highlight=False, soft_wrap=True)
        if self.json_out:
            print(json.dumps(record), flush=True)
        elif self.table_mode:
            self.rows.append(result)
        elif self.paths_out and result.status != "failed" and result.outputs:
            print("\n".join(result.outputs.values()), flush=True)
        if self.task_id is not None:
            self.progress.advance(self.task_id)


def print_table(rows: list[ItemResult], columns) -> None:
    """The results of a run as a table on stdout (a terminal): input, status, ``columns``, outputs, seconds."""
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


def print_summary(console: Console, summary: BatchSummary, extra: BatchSummary, *, interrupted: bool = False,
                  note: str = "") -> None:
    """``segtool: N done, N skipped, N failed`` on ``console`` (``extra``: failures found before the run)."""
    failed = summary.failed + extra.failed
    parts = [f"{summary.done} done", f"{summary.skipped} skipped", f"{failed} failed"]
    if summary.not_started:
        parts.append(f"{summary.not_started} not started")
    prefix = ("interrupted: " if interrupted else "") + note
    console.print(f"segtool: {prefix}{', '.join(parts)}", markup=False, highlight=False)
