"""``segtool report``: one static HTML page over a run's results, the ones that need a second look on top."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from segtool.batch import EXIT_INTERRUPTED, EXIT_USAGE
from segtool.cli.application import app
from segtool.cli.messages import error_line, fail, print_error, stderr
from segtool.cli.options import PANEL_IO, Debug, Jobs, Overwrite, Quiet, Recursive
from segtool.cli.specs import expand_specs
from segtool.errors import SegtoolError, first_line
from segtool.quiet import quiet_libraries

PANEL_REPORT = "Report"


@app.command(rich_help_panel="Export and evaluate")
def report(
    results: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Label images of the run (files, folders, glob patterns, '-' for stdin). Optional with --manifest, "
            "which names them.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Folder for index.html and thumbs/ (created).", file_okay=False,
                     rich_help_panel=PANEL_IO),
    ] = ...,  # type: ignore[assignment]
    image: Annotated[
        Optional[Path],
        typer.Option("--image", "-i", help="The images: a file, or a folder where each label file finds the image with "
                     "its name stem (mask endings such as _labels are ignored). Outlines are drawn on them and "
                     "saturation is checked. With --manifest the run's own inputs are used.", rich_help_panel=PANEL_IO),
    ] = None,
    manifest: Annotated[
        Optional[Path],
        typer.Option("--manifest", help="The run's JSON lines (what `segtool predict/baseline --json` prints or "
                     "--manifest writes): inputs, outputs, failures with their errors, model, diameter and scale.",
                     dir_okay=False, rich_help_panel=PANEL_IO),
    ] = None,
    thumb_size: Annotated[
        int, typer.Option("--thumb-size", min=32, max=1024, help="Longest side of a thumbnail, in pixels.",
                          rich_help_panel=PANEL_REPORT)
    ] = 128,
    z_threshold: Annotated[
        float, typer.Option("--z-threshold", min=0.5, help="Flag a count or median size whose robust z-score "
                            "(median and MAD over the run) is beyond this.", rich_help_panel=PANEL_REPORT)
    ] = 3.5,
    model_ratio: Annotated[
        float, typer.Option("--model-ratio", min=1.0, help="Flag objects this many times larger or smaller than the "
                            "model's training objects.", rich_help_panel=PANEL_REPORT)
    ] = 2.5,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, help="Results per HTML page (index.html, page-2.html, ...).",
                          rich_help_panel=PANEL_REPORT)
    ] = 1000,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    jobs: Jobs = 1,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a static report of a run: index.html with thumbnails, figures and flags, opened from disk.

    Each result gets a thumbnail with its object outlines, its object count, median diameter and coverage,
    the model and links to its files; results to look at again (failed, empty, sizes or counts far from the
    rest of the run or from the model's training data, saturated images, objects cut by the border) come
    first, each with its reason. The page needs no server and no internet.
    """
    from segtool.report.build import ReportOptions, build_report
    from segtool.report.collect import Entry, entries_from_labels, entries_from_manifest, read_manifest
    from segtool.report.flags import FlagOptions

    if not results and manifest is None:
        fail("give the run's label images, or --manifest run.jsonl", code=EXIT_USAGE)
    if image is not None and not image.exists():
        fail("--image: no such file or folder", where=str(image), code=EXIT_USAGE)
    entries: list[Entry] = []
    if manifest is not None:
        try:
            entries = entries_from_manifest(read_manifest(manifest), base=manifest.parent)
        except SegtoolError as err:
            fail(first_line(err), code=EXIT_USAGE)
    problems = 0
    if results:
        expanded = expand_specs(results, recursive=recursive, kind="labels")
        for spec, message in expanded.problems:
            entries.append(Entry(labels=None, image=None, input=spec, status="failed", error=message))
            print_error(spec, message)
            problems += 1
        known = {e.labels.resolve() for e in entries if e.labels is not None}
        entries.extend(e for e in entries_from_labels(expanded.files) if e.labels.resolve() not in known)
    if not entries:
        fail("no results found")
    options = ReportOptions(size=thumb_size, jobs=jobs, page_size=page_size, flags=FlagOptions(z_threshold=z_threshold,
                                                                          model_ratio=model_ratio))
    console = stderr()
    try:
        with quiet_libraries(debug):
            outcome = build_report(entries, output, image_spec=image if manifest is None or results else None,
                                   options=options, overwrite=overwrite, debug=debug,
                                   source=None if manifest is None else str(manifest))
    except SegtoolError as err:
        fail(first_line(err), code=1)
    except KeyboardInterrupt as err:
        raise typer.Exit(getattr(err, "exit_code", EXIT_INTERRUPTED)) from None
    for where, message in outcome.unreadable:
        console.print(error_line(where, message), markup=False, highlight=False)
    print(outcome.index, flush=True)
    if not quiet:
        console.print(f"segtool: report of {outcome.results} results, {outcome.flagged} flagged, "
                      f"{len(outcome.unreadable) + problems} unreadable: {outcome.index}", markup=False)
    raise typer.Exit(1 if outcome.unreadable or problems else 0)
