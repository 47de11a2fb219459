"""``segtool predict``: segment images with a trained U-Net (tiled, any size)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from segtool.batch import EXIT_USAGE
from segtool.cli.application import app
from segtool.cli.messages import fail, stderr
from segtool.cli.options import (
    parse_diameter,
    BatchOptions,
    Device,
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
    Precision,
    Quiet,
    Recursive,
    SaveOverlay,
    SkipExisting,
    ZarrOut,
    batch_options,
    memory_budget,
)
from segtool.cli.run import run_files
from segtool.cli.zstack import StitchThreshold, ZMode, ZSpacing
from segtool.errors import SegtoolError, first_line
from segtool.pipeline.options import MAX_TILE, SEAM_HALO, ObjectOptions, TileOptions
from segtool.tasks.predict import BAND_PIXELS, PredictTask
from segtool.volume.stitch import STITCH_THRESHOLD
from segtool.infer.onnxbackend import (
    OnnxModel,
    load_onnx_model,
    native_bf16_cpu,
    prefer_onnxruntime,
    write_onnx_copy,
)

PANEL_MODEL = "Model"
PANEL_TILING = "Tiling"
PANEL_POST = "Objects"
PANEL_EXTRA = "Extra outputs"
PANEL_LARGE = "Large images"

_COLUMNS = [
    ("objects", lambda r: r.figures["objects"]),
    ("tiles", lambda r: r.figures["tiles"]),
]

def load_prepared(model_path: Path, *, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
    """Load a model file and prepare its network for inference (threads set for this process)."""
    from segtool.infer.network import load_for_inference

    return load_for_inference(model_path, device=device, threads=threads, precision=precision)


ModelOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--model",
        "-m",
        help="Model file from `segtool train`, or a shipped model's name (`segtool model list`: nuclei, nuclei-he). "
        "Default: nuclei, the shipped fluorescence model.",
        rich_help_panel=PANEL_MODEL,
        dir_okay=False,
    ),
]
DeviceOpt = Annotated[
    Device, typer.Option("--device", help="Where the network runs.", rich_help_panel=PANEL_MODEL, case_sensitive=False)
]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads", min=1, help="CPU threads for the network (default: all cores).", rich_help_panel=PANEL_MODEL)
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Network arithmetic: fp32, bf16 (bfloat16, faster on CPUs with AVX512-BF16/AMX and recent GPUs), "
        "or auto (bf16 where the hardware runs it natively).",
        rich_help_panel=PANEL_MODEL,
        case_sensitive=False,
    ),
]
TileOpt = Annotated[
    Optional[int],
    typer.Option(
        "--tile",
        min=16,
        help="Largest tile side in pixels, a multiple of 2**depth (default: 2048 on CPU, 4096 on CUDA; lower it to "
        "save memory). With --overlap: the tile size (default: the model's patch size).",
        rich_help_panel=PANEL_TILING,
    ),
]
TileHaloOpt = Annotated[
    Optional[int],
    typer.Option(
        "--tile-halo",
        min=0,
        help="Network context kept around each tile's core, in pixels (default: the model's effective context, "
        "104 for the shipped model); tile cores then match whole-image inference within 1e-3.",
        rich_help_panel=PANEL_TILING,
    ),
]
OverlapOpt = Annotated[
    Optional[float],
    typer.Option(
        "--overlap",
        min=0.0,
        max=0.9,
        help="Instead of halo tiles: tiles of --tile overlapping by this fraction, blended with a Gaussian window "
        "(the tiling segtool used before halo tiles; 0.25 computes every pixel about 1.8 times).",
        rich_help_panel=PANEL_TILING,
        show_default=False,
    ),
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option("--batch-size", "-b", min=1, help="Tiles per network call (default: as many as fit 2048^2 pixels on CPU, 4096^2 on CUDA; 4 with --overlap).", rich_help_panel=PANEL_TILING, show_default=False),
]
TtaOpt = Annotated[
    bool, typer.Option("--tta", help="Test-time augmentation: average 8 flips/rotations (8x slower).", rich_help_panel=PANEL_TILING)
]
ScaleOpt = Annotated[
    Optional[float],
    typer.Option("--scale", min=0.05, max=20.0, help="Resize images by this factor before the network; labels come back at the original size.", rich_help_panel=PANEL_TILING),
]
DiameterOpt = Annotated[
    str,
    typer.Option("--diameter", help="Typical object diameter in pixels, or 'auto': estimated per image by the network at a few scales, and the image resized to the model's training size. A number sets --scale from the model's training diameter.", rich_help_panel=PANEL_TILING),
]
ProbThresholdOpt = Annotated[
    Optional[float],
    typer.Option("--prob-threshold", min=0.0, max=1.0, help="Foreground probability threshold (default: the model's tuned value, else 0.5).", rich_help_panel=PANEL_POST),
]
SeedThresholdOpt = Annotated[
    Optional[float],
    typer.Option("--seed-threshold", min=0.0, max=1.0, help="Interior probability / distance above which a pixel seeds an object (default: the model's value).", rich_help_panel=PANEL_POST),
]
MinSizeOpt = Annotated[
    Optional[int], typer.Option("--min-size", min=0, help="Remove objects smaller than this many pixels (default: the model's value).", rich_help_panel=PANEL_POST)
]
SplitHeightOpt = Annotated[
    Optional[float],
    typer.Option("--split-height", min=0.0, help="Split seed regions shaped like touching discs whose peaks stand this many pixels above the neck (default: the model's value; 0: no splitting).", rich_help_panel=PANEL_POST),
]
SaveProbOpt = Annotated[
    bool, typer.Option("--save-prob", help="Also write the probability maps (<stem>_prob.tif, float32, one plane per class).", rich_help_panel=PANEL_EXTRA)
]
BandsOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--bands/--no-bands",
        help=f"Predict band by band with bounded memory and write tiled BigTIFF. Default: for images over {BAND_PIXELS // 2**20} Mpixel.",
        rich_help_panel=PANEL_LARGE,
        show_default=False,
    ),
]
BandRowsOpt = Annotated[
    Optional[int], typer.Option("--band-rows", min=16, help="Rows per band (default: from the image width).", rich_help_panel=PANEL_LARGE)
]
HaloOpt = Annotated[
    int, typer.Option("--halo", min=0, help="Context around each band (rows) or block (pixels, --block-size); objects up to 4x this tall are never cut by a band, objects under half of it are never cut by a block.", rich_help_panel=PANEL_LARGE)
]


@app.command(rich_help_panel="Segment")
def predict(
    ctx: typer.Context,
    images: Inputs,
    model: ModelOpt = None,
    output: OutputDir = None,
    device: DeviceOpt = Device.auto,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = Precision.auto,
    tile: TileOpt = None,
    tile_halo: TileHaloOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = None,
    tta: TtaOpt = False,
    scale: ScaleOpt = None,
    diameter: DiameterOpt = "auto",
    prob_threshold: ProbThresholdOpt = None,
    seed_threshold: SeedThresholdOpt = None,
    min_size: MinSizeOpt = None,
    split_height: SplitHeightOpt = None,
    save_prob: SaveProbOpt = False,
    save_overlay: SaveOverlay = False,
    bands: BandsOpt = None,
    band_rows: BandRowsOpt = None,
    halo: HaloOpt = SEAM_HALO,
    channel: Channel = None,
    plane: Plane = None,
    z_spacing: ZSpacing = None,
    z_mode: ZMode = "auto",
    stitch_threshold: StitchThreshold = STITCH_THRESHOLD,
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
    """Segment nuclei with a trained U-Net, tile by tile, on images of any size.

    Writes <stem>_labels.tif (uint16 labels, uint32 above 65535 objects; 0 = background) for each input.
    Images over 16 Mpixel are processed in bands with bounded memory and written as tiled BigTIFF.
    A Z stack (without --plane) is predicted plane by plane and its objects linked in 3-D (--z-mode).
    """
    batch = batch_options(ctx)
    given_diameter = parse_diameter(diameter)
    if scale is not None and given_diameter is not None:
        fail("give --scale or --diameter, not both", code=EXIT_USAGE)
    threads = _network_threads(threads, batch)
    # onnxruntime runs the network in this process only (workers of --jobs/--cluster and block mode load torch)
    onnx = batch.jobs == 1 and batch.cluster is None and not batch.big and prefer_onnxruntime(
        device=device.value, precision=precision.value)
    model_path, model_name, loaded, factor = _prepare_model(
        model, device=device.value, threads=threads, precision=precision.value, scale=scale, diameter=given_diameter,
        onnx=onnx,
    )
    tiling = TileOptions(tile=tile, overlap=overlap, tile_halo=tile_halo, batch_size=batch_size, tta=tta, scale=factor)
    if tile is not None or tile_halo is not None:
        _check_tiles(loaded, tiling)
    objects = ObjectOptions(prob_threshold=prob_threshold, min_size=min_size, seed_threshold=seed_threshold,
                            split_height=split_height)
    if batch.big:
        _refuse_in_big_mode(save_prob=save_prob, save_overlay=save_overlay, bands=bands)
        from segtool.tasks.big import BigPredictTask

        # Big-image mode runs the in-memory run's tile grid and scale (None: estimated once per image).
        task = BigPredictTask(model_path=model_path, block_size=batch.block_size, halo=halo, zarr=batch.zarr,
                              output=batch.outputs, tiling=tiling, objects=objects,
                              device=device.value, threads=threads, channel=channel, plane=plane,
                              precision=precision.value, diameter=given_diameter,
                              input_transform=loaded.config.input)
    elif batch.zarr:
        fail("--zarr writes big-image mode's labels: add --block-size N", code=EXIT_USAGE)
    else:
        task = PredictTask(
            model_path=model_path, device=device.value, threads=threads, precision=precision.value,
            output=batch.outputs, tiling=tiling, objects=objects,
            save_prob=save_prob, save_overlay=save_overlay, bands=bands, band_rows=band_rows, halo=halo,
            channel=channel, plane=plane, memory=_memory_guard(batch, bands), model_name=model_name,
            diameter=given_diameter, z_spacing=z_spacing, z_mode=z_mode, stitch_threshold=stitch_threshold,
        )
        task.use_model(loaded)
    try:
        run_files(images, task, batch, kind="image", columns=_COLUMNS, verb="predict")
    except typer.Exit:
        if onnx and not isinstance(loaded, OnnxModel):
            _write_onnx_copy(model_path, quiet=batch.quiet)
        raise


def _refuse_in_big_mode(*, save_prob: bool, save_overlay: bool, bands: bool | None) -> None:
    """Exit 2 when an option big-image mode (``--block-size``) cannot honour was given."""
    refused = [name for name, on in (("--save-prob", save_prob), ("--save-overlay", save_overlay),
                                     ("--bands", bool(bands))) if on]
    if refused:
        fail(f"{', '.join(refused)}: not available in big-image mode (--block-size)", code=EXIT_USAGE)


def _write_onnx_copy(model_path: Path, *, quiet: bool) -> None:
    """After a run on torch: the model's ONNX copy, so later runs start without torch (a few seconds, once)."""
    copy = write_onnx_copy(model_path)
    if copy is not None and not quiet:
        stderr().print(f"segtool: note: wrote an onnxruntime copy of the model ({copy}); later runs start faster",
                       markup=False, highlight=False)


def _network_threads(threads: int | None, batch: BatchOptions) -> int | None:
    """``--threads``, or the share of the cores each of several parallel images (or local workers) gets."""
    if threads is None and batch.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // batch.jobs)  # parallel images share the cores instead of each taking all
    if threads is None and (batch.cluster is not None or batch.big):
        from segtool.distributed.cluster import parse_cluster, threads_per_local_worker

        try:  # the workers of a local cluster share this machine's cores
            threads = threads_per_local_worker(parse_cluster(batch.cluster or "local"))
        except SegtoolError:
            pass  # run_files reports a bad --cluster value (exit 2)
    return threads




def _prepare_model(model: Path | None, *, device: str, threads: int | None, precision: str, scale: float | None,
                   diameter: float | None, onnx: bool = False):
    """The model named by ``-m`` loaded once, and the image scale factor; exit 2 when it cannot be used.

    ``onnx``: run the network on onnxruntime where the model has an ONNX copy (without importing torch).
    Returns ``(model_path, model_name, loaded, factor)``; ``factor`` is None when neither ``--scale`` nor a
    number for ``--diameter`` is given: the size is then estimated per image.
    """
    from segtool.infer.predict import scale_for_diameter
    from segtool.model.shipped import resolve_model

    try:
        model_path, model_name = resolve_model(model)
    except SegtoolError as err:
        fail(first_line(err), code=EXIT_USAGE)
    try:
        loaded = load_onnx_model(model_path, threads=threads,
                                 torch_for_large=precision == "auto" and native_bf16_cpu()) if onnx else None
        if loaded is None:
            loaded = load_prepared(model_path, device=device, threads=threads, precision=precision)
        factor = scale_for_diameter(loaded, diameter) if diameter is not None else scale
    except SegtoolError as err:
        fail(first_line(err), where=str(model_path), code=EXIT_USAGE)
    return model_path, model_name, loaded, factor


def _check_tiles(loaded, tiling: TileOptions) -> None:
    """Exit 2 when ``--tile``/``--tile-halo`` leave no core in a tile: a usage error, found before any image is read."""
    from segtool.infer.network import network_device_type

    try:
        side = 4 * (tiling.tile or MAX_TILE["cpu"])
        tiling.plan(loaded.config, (side, side), device_type=network_device_type(loaded.net))
    except SegtoolError as err:
        fail(first_line(err), code=EXIT_USAGE)


def _memory_guard(batch: BatchOptions, bands: bool | None):
    """The memory guard of predict: band mode (automatic over BAND_PIXELS) keeps memory bounded, so then only
    the decoded image counts."""
    return memory_budget(
        batch.max_memory, "predict", jobs=batch.jobs, streamed_above=None if bands is False else BAND_PIXELS,
        way_out="drop --no-bands (large images are then predicted band by band)" if bands is False
        else "save it as a TIFF, which predict reads band by band",
    )
