"""``segtool baseline``: background-corrected threshold segmentation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from segtool.cli.application import app
from segtool.cli.messages import fail
from segtool.cli.options import (
    parse_diameter,
    BlockSize,
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
    SaveOverlay,
    SkipExisting,
    ZarrOut,
    batch_options,
    memory_budget,
)
from segtool.cli.run import run_files
from segtool.cli.zstack import ZSpacing
from segtool.errors import InputError
from segtool.tasks.baseline import BaselineOptions, BaselineTask
from segtool.thresholds import THRESHOLD_METHODS

PANEL_METHOD = "Method"
PANEL_EXTRA = "Extra outputs"
_COLUMNS = [
    ("objects", lambda r: r.figures["objects"]),
    ("threshold", lambda r: "" if r.figures["threshold"] is None else f"{r.figures['threshold']:.4g}"),
]


def parse_threshold(text: str) -> str | float:
    """``otsu|li|triangle|yen`` or a number (in background-corrected intensity units)."""
    lowered = text.strip().lower()
    if lowered in THRESHOLD_METHODS:
        return lowered
    try:
        return float(lowered)
    except ValueError:
        raise InputError(f"--threshold must be one of {', '.join(THRESHOLD_METHODS)} or a number, got {text!r}") from None


@app.command(rich_help_panel="Segment")
def baseline(
    ctx: typer.Context,
    images: Inputs,
    output: OutputDir = None,
    degree: Annotated[
        int, typer.Option("--degree", "-d", min=0, help="Polynomial degree of the background fit.", rich_help_panel=PANEL_METHOD)
    ] = 2,
    robust: Annotated[
        bool,
        typer.Option(
            "--robust/--no-robust",
            help="Refit the background without the objects, so bright nuclei don't lift it.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = True,
    polarity: Annotated[
        str,
        typer.Option(
            "--polarity",
            help="Objects are 'bright' (fluorescence) or 'dark' (e.g. brightfield) against the background, or 'auto'.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = "bright",
    threshold: Annotated[
        str,
        typer.Option(
            "--threshold",
            "-t",
            help="otsu, li, triangle, yen, or a number in background-corrected intensity units.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = "otsu",
    min_size: Annotated[
        Optional[int], typer.Option("--min-size", min=0, help="Remove objects smaller than this many pixels (default: 20 for nuclei 21 px across, scaled with --diameter; 20 for Z stacks and --block-size).", rich_help_panel=PANEL_METHOD, show_default=False)
    ] = None,
    diameter: Annotated[
        str, typer.Option("--diameter", help="Typical object diameter in pixels, or 'auto' (read from the thresholded objects): --min-size and the --split depth follow it (2-D images).", rich_help_panel=PANEL_METHOD)
    ] = "auto",
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="Fill holes inside objects.", rich_help_panel=PANEL_METHOD)] = False,
    smooth: Annotated[
        float,
        typer.Option("--smooth", min=0.0, help="Gaussian pre-filter sigma in pixels (0 = off).", rich_help_panel=PANEL_METHOD),
    ] = 0.0,
    split: Annotated[
        bool, typer.Option("--split", help="Separate touching nuclei with a distance-transform watershed.", rich_help_panel=PANEL_METHOD)
    ] = False,
    save_background: Annotated[
        bool, typer.Option("--save-background", help="Also write the fitted background (<stem>_background.tif, float32).", rich_help_panel=PANEL_EXTRA)
    ] = False,
    save_corrected: Annotated[
        bool, typer.Option("--save-corrected", help="Also write image minus background (<stem>_corrected.tif, float32).", rich_help_panel=PANEL_EXTRA)
    ] = False,
    save_overlay: SaveOverlay = False,
    channel: Channel = None,
    plane: Plane = None,
    z_spacing: ZSpacing = None,
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
    block_size: BlockSize = None,
    zarr: ZarrOut = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fit and subtract a polynomial background, threshold, and label objects.

    Writes <stem>_labels.tif (uint16 labels, 0 = background) for each input. A Z stack (without --plane) is
    segmented in 3-D: background polynomial of (x, y, z), 3-D objects, --min-size in voxels.
    """
    if polarity not in ("bright", "dark", "auto"):
        fail(f"--polarity must be bright, dark or auto, got {polarity!r}", code=2)
    try:
        threshold_value = parse_threshold(threshold)
    except InputError as err:
        fail(str(err), code=2)
    options = BaselineOptions(degree=degree, robust=robust, polarity=polarity, threshold=threshold_value,
                              min_size=min_size, fill_holes=fill_holes, smooth=smooth, split=split,
                              diameter=parse_diameter(diameter) or "auto")
    batch = batch_options(ctx)
    if batch.big:
        extras = [name for name, on in (("--save-background", save_background), ("--save-corrected", save_corrected),
                                        ("--save-overlay", save_overlay)) if on]
        if extras:
            fail(f"{', '.join(extras)}: not available in big-image mode (--block-size)", code=2)
        from segtool.tasks.big import BigBaselineTask

        # blocks keep the fixed defaults: a size estimate would need the whole image's foreground
        task = BigBaselineTask(block_size=batch.block_size, zarr=batch.zarr, output=batch.outputs, options=options,
                               channel=channel, plane=plane)
    elif batch.zarr:
        fail("--zarr writes big-image mode's labels: add --block-size N", code=2)
    else:
        task = BaselineTask(
            output=batch.outputs,
            options=options,
            save_background=save_background,
            save_corrected=save_corrected,
            save_overlay=save_overlay,
            channel=channel,
            plane=plane,
            memory=memory_budget(
                batch.max_memory, "baseline --split" if split else "baseline", jobs=batch.jobs,
                way_out="segment it in blocks with --block-size 4096 (needs segtool[distributed])",
            ),
            z_spacing=z_spacing,
        )
    run_files(images, task, batch, kind="image", columns=_COLUMNS, verb="baseline")


