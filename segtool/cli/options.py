"""The options every command shares: Typer declarations, and the option objects built from them.

A command module declares its options with the ``Annotated`` aliases below,
gathers the batch options once into a :class:`BatchOptions`
(:func:`batch_options`), and turns option values into the objects the library
takes (:func:`parse_diameter`, :func:`memory_budget`). Bad values exit 2 with
one line (:func:`segtool.cli.messages.fail`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segtool.batch import EXIT_USAGE, RunOptions
from segtool.cli.messages import fail
from segtool.errors import SegtoolError, first_line
from segtool.memory import FIXED_BYTES, WORKING_BYTES, MemoryBudget, parse_memory_limit
from segtool.outputs import OutputOptions
from segtool.shard import Shard, parse_shard

__all__ = [
    "PANEL_IO",
    "PANEL_BATCH",
    "PANEL_DISTRIBUTED",
    "BatchOptions",
    "batch_options",
    "parse_diameter",
    "memory_budget",
    "Device",
    "Precision",
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
]

PANEL_IO = "Inputs and outputs"
PANEL_BATCH = "Batch behaviour"


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

    @property
    def run(self) -> RunOptions:
        """What :func:`segtool.batch.run_batch` needs of these options."""
        return RunOptions(on_error=OnError(self.on_error).value, skip_existing=self.skip_existing,
                          overwrite=self.overwrite, jobs=self.jobs, debug=self.debug)

    @property
    def outputs(self) -> OutputOptions:
        """Where every task writes and whether it replaces (``-o``, ``--overwrite``), held whole by the task."""
        return OutputOptions(folder=self.output, overwrite=self.overwrite)


def batch_options(ctx: typer.Context) -> BatchOptions:
    """The :class:`BatchOptions` of the running command, from the parameters Typer parsed."""
    names = {field.name for field in fields(BatchOptions)}
    return BatchOptions(**{name: value for name, value in ctx.params.items() if name in names})


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
