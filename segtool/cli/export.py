"""``segtool export`` and ``segtool measure``: label images to Fiji, QuPath, spreadsheets and pictures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from segtool.batch import EXIT_USAGE, ItemResult, RunOptions, run_batch
from segtool.cli.application import app
from segtool.cli.messages import fail, print_error, stderr
from segtool.cli.options import (
    Channel,
    ClusterOpt,
    Debug,
    Inputs,
    Jobs,
    JsonOut,
    Manifest,
    MaxMemory,
    ShardOpt,
    OnError,
    OnErrorOpt,
    OutputDir,
    Overwrite,
    Plane,
    Quiet,
    Recursive,
    SkipExisting,
    BatchOptions,
    batch_options,
    memory_budget,
)
from segtool.cli.run import run_files
from segtool.cli.specs import expand_specs, shard_files
from segtool.errors import InputError
from segtool.quiet import quiet_libraries
from segtool.tasks.export import FORMAT_SUFFIXES, ExportTask

PANEL_FORMAT = "Formats"

def parse_formats(values: list[str]) -> tuple[str, ...]:
    """``--format`` values (repeatable and/or comma-separated), checked and de-duplicated.

    Examples
    --------
    >>> parse_formats(["csv,geojson", "CSV"])
    ('csv', 'geojson')
    """
    formats: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip().lower().replace("_", "-")
            if name in ("roi", "rois", "imagej", "zip"):
                name = "imagej-roi"
            if not name:
                continue
            if name not in FORMAT_SUFFIXES:
                raise InputError(f"unknown --format {item.strip()!r}; choose from {', '.join(FORMAT_SUFFIXES)}")
            if name not in formats:
                formats.append(name)
    if not formats:
        raise InputError(f"give at least one --format ({', '.join(FORMAT_SUFFIXES)})")
    return tuple(formats)


FormatOpt = Annotated[
    list[str],
    typer.Option(
        "--format",
        "-f",
        help=(
            "Output format(s), repeatable or comma-separated: labels (<stem>_labels.tif, uint16/uint32), "
            "binary (<stem>_binary.tif, 0/255), png (<stem>_labels.png in colour, or <stem>_overlay.png with --image), "
            "imagej-roi (<stem>_rois.zip for Fiji's ROI Manager), geojson (<stem>.geojson for QuPath), "
            "csv (<stem>_objects.csv, one row per object)."
        ),
        rich_help_panel=PANEL_FORMAT,
        show_default=False,
    ),
]
ImageOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--image",
        "-i",
        help=(
            "Intensity image: a file, or a folder where each label file finds the image with the same name stem "
            "(mask endings such as _labels, _masks, _cp_masks are ignored). Adds intensity columns to csv/geojson; "
            "png draws outlines on it."
        ),
        rich_help_panel=PANEL_FORMAT,
    ),
]


@app.command(rich_help_panel="Export and evaluate")
def export(
    ctx: typer.Context,
    labels: Inputs,
    formats: FormatOpt = [],  # noqa: B006  (Typer needs a list default)
    image: ImageOpt = None,
    output: OutputDir = None,
    channel: Channel = None,
    plane: Plane = None,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    skip_existing: SkipExisting = False,
    json_out: JsonOut = False,
    manifest: Manifest = None,
    on_error: OnErrorOpt = OnError.skip,
    jobs: Jobs = 1,
    max_memory: MaxMemory = None,
    shard: ShardOpt = None,
    cluster: ClusterOpt = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Convert label images for Fiji, QuPath, spreadsheets and viewers.

    Reads any label image (segtool's, Cellpose _cp_masks, StarDist, Fiji; TIFF or PNG) and writes
    <stem><ending> per format into -o DIR (default: beside each input). Outlines follow pixel edges, so
    they fill back to exactly the same pixels.
    """
    try:
        chosen = parse_formats(formats)
    except InputError as err:
        fail(str(err), code=EXIT_USAGE)
    batch = batch_options(ctx)
    task = ExportTask(formats=chosen, output=batch.outputs, image=_checked_image(image),
                      channel=channel, plane=plane, memory=_memory_guard(batch, "export"))
    _run_label_files(labels, task, batch, verb="export")


def _checked_image(image: Path | None) -> Path | None:
    """``--image``, or exit 2 when it does not exist."""
    if image is not None and not image.exists():
        fail("--image: no such file or folder", where=str(image), code=EXIT_USAGE)
    return image


def _memory_guard(batch: BatchOptions, command: str):
    return memory_budget(batch.max_memory, command, jobs=batch.jobs, way_out="raise --max-memory if this machine has the memory")


def _run_label_files(labels, task, batch: BatchOptions, *, verb: str) -> None:
    """Run an export-type task over label images with the shared batch options (export and measure)."""
    run_files(labels, task, batch, kind="labels", columns=[("objects", lambda r: r.figures["objects"])], verb=verb)


SUMMARY_COLUMNS = ("labels", "objects", "mean_area", "median_area", "coverage")
SUMMARY_COLUMNS_3D = ("labels", "objects", "mean_volume", "median_volume", "coverage")  # Z-stack label files


@app.command(rich_help_panel="Export and evaluate")
def measure(
    ctx: typer.Context,
    labels: Inputs,
    image: ImageOpt = None,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help=(
                "Instead of a table per image, print one CSV row per image on stdout (labels, objects, mean_area, "
                "median_area, coverage, and calibrated area / mean intensity when available); JSON lines with --json."
            ),
            rich_help_panel=PANEL_FORMAT,
        ),
    ] = False,
    output: OutputDir = None,
    channel: Channel = None,
    plane: Plane = None,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    skip_existing: SkipExisting = False,
    json_out: JsonOut = False,
    manifest: Manifest = None,
    on_error: OnErrorOpt = OnError.skip,
    jobs: Jobs = 1,
    max_memory: MaxMemory = None,
    shard: ShardOpt = None,
    cluster: ClusterOpt = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Measure every object: area, centroid, bbox, perimeter, shape and intensity.

    Writes <stem>_objects.csv per label image (the same as export --format csv). Values are in pixels, plus
    calibrated columns (e.g. area_um2) when the TIFF carries a pixel size. With --summary, prints one row per
    image instead.
    """
    image = _checked_image(image)
    batch = batch_options(ctx)
    memory = _memory_guard(batch, "measure")
    if not summary:
        task = ExportTask(formats=("csv",), output=batch.outputs, image=image,
                          channel=channel, plane=plane, memory=memory)
        _run_label_files(labels, task, batch, verb="measure")
    if batch.cluster is not None:
        fail("--cluster is not available with --summary (the summary is computed in this process)", code=EXIT_USAGE)
    task = ExportTask(formats=("csv",), image=image, channel=channel, plane=plane, summary=True, memory=memory)
    _summary_rows(labels, task, batch)


def _summary_rows(specs, task: ExportTask, batch: BatchOptions) -> None:
    """Run ``task`` on every label file and stream one CSV row (or JSON line) per image to stdout."""
    import csv

    on_error, json_out = OnError(batch.on_error), batch.json_out
    expanded = expand_specs(specs, recursive=batch.recursive, kind="labels")
    found = len(expanded.files)
    expanded.files = shard_files(expanded.files, specs, batch.shard)
    failed = 0
    for spec, message in expanded.problems:
        print_error(spec, message)
        failed += 1
    if failed and on_error == OnError.stop:
        raise typer.Exit(1)
    if not found:
        fail("no input files given")
    writer = csv.writer(sys.stdout, lineterminator="\n")
    columns: list[str] = []

    def emit(result: ItemResult) -> None:
        nonlocal columns
        if result.status == "failed":
            print_error(result.input, result.error or "failed")
            return
        row = {"labels": result.input, **result.figures, **({"shard": str(batch.shard)} if batch.shard else {})}
        if json_out:
            print(json.dumps(row), flush=True)
            return
        if not columns:
            base = SUMMARY_COLUMNS_3D if "mean_volume" in row else SUMMARY_COLUMNS
            extra = [k for k in row if k not in base]
            columns = [*base, *extra]
            writer.writerow(columns)
        writer.writerow([_format_cell(row.get(name, "")) for name in columns])
        sys.stdout.flush()

    with quiet_libraries(batch.debug):
        summary = run_batch(expanded.files, task, RunOptions(on_error=on_error.value, jobs=batch.jobs, debug=batch.debug),
                            on_result=emit)
    if not batch.quiet:
        note = f"shard {batch.shard} ({len(expanded.files)} of {found} inputs): " if batch.shard else ""
        stderr().print(f"segtool: {note}{summary.done} done, {summary.failed + failed} failed", markup=False, highlight=False)
    raise typer.Exit(1 if summary.failed or failed else 0)


def _format_cell(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else f"{value:.6g}"
    return value
