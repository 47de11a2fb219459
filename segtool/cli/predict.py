"""``segtool predict``: segment images with a trained U-Net (tiled, any size)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from segtool.batch import EXIT_USAGE
from segtool.cli._app import app
from segtool.cli._common import (
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
    OnError,
    OnErrorOpt,
    OutputDir,
    Overwrite,
    Plane,
    Precision,
    Quiet,
    Recursive,
    SkipExisting,
    ZarrOut,
    fail,
    memory_budget,
    run_files,
)
from segtool.cli.zstack import StitchThreshold, ZMode, ZSpacing
from segtool.errors import InputError, SegtoolError, first_line
from segtool.inputs import output_path

PANEL_MODEL = "Model"
PANEL_TILING = "Tiling"
PANEL_POST = "Objects"
PANEL_EXTRA = "Extra outputs"
PANEL_LARGE = "Large images"

_COLUMNS = [
    ("objects", lambda r: r.figures["objects"]),
    ("tiles", lambda r: r.figures["tiles"]),
]

#: Images with more pixels than this are predicted band by band unless --no-bands.
BAND_PIXELS = 4096 * 4096


@dataclass
class PredictTask:
    """Per-file work of ``segtool predict`` (picklable for ``--jobs``/``--cluster``: each process loads the model once)."""

    model_path: Path
    device: str
    threads: int | None
    precision: str
    output_dir: Path | None
    overwrite: bool
    tile: int | None
    overlap: float | None
    batch_size: int | None
    tta: bool
    scale: float
    prob_threshold: float | None
    min_size: int | None
    seed_threshold: float | None
    split_height: float | None
    save_prob: bool
    save_overlay: bool
    bands: bool | None
    band_rows: int | None
    halo: int
    channel: int | None
    plane: int | None
    tile_halo: int | None = None
    memory: Any = None  # the memory guard (segtool.memory.MemoryBudget, --max-memory)
    model_name: str | None = None  # what -m named (a shipped model's name, or the file), recorded per image
    _model: Any = field(default=None, init=False, repr=False, compare=False)
    # Z stacks (no --plane): predicted per plane, then 3-D objects (segtool.volume.predict).
    z_spacing: float | None = None
    z_mode: str = "auto"
    stitch_threshold: float = 0.25

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def use_model(self, loaded) -> None:
        """Use an already loaded, inference-prepared model (the CLI loads it once to check the file first)."""
        self._model = loaded

    def model(self):
        """The loaded, inference-prepared model (loaded on first use in each process)."""
        if self._model is None:
            from segtool.unet.predict import load_for_inference_cached

            # Cached per process: worker processes get the task without the model,
            # once per image, and must not reload the file for every image.
            self._model = load_for_inference_cached(
                self.model_path, device=self.device, threads=self.threads, precision=self.precision
            )
        return self._model

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        outputs = {"labels": output_path(path, "_labels.tif", output_dir=self.output_dir)}
        if self.save_prob:
            outputs["prob"] = output_path(path, "_prob.tif", output_dir=self.output_dir)
        if self.save_overlay:
            outputs["overlay"] = output_path(path, "_overlay.png", output_dir=self.output_dir)
        return outputs

    def _options(self) -> dict[str, Any]:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "tile_halo": self.tile_halo,
            "batch_size": self.batch_size,
            "tta": self.tta,
            "prob_threshold": self.prob_threshold,
            "min_size": self.min_size,
            "seed_threshold": self.seed_threshold,
            "split_height": self.split_height,
        }

    @property
    def finish_threads(self) -> int:
        """Images post-processed at once beside the network: the cores torch's threads leave free (at least 1)."""
        cores = os.cpu_count() or 1
        if self.device in ("cuda", "mps") or (self.device == "auto" and self._model is not None
                                               and _device_type(self._model) != "cpu"):
            return max(1, min(8, cores - 1))
        return max(1, cores - (self.threads or cores))

    def run(self, path: Path) -> dict[str, Any]:
        # The same three stages the streamed schedule (segtool.pipeline.stream) overlaps across images.
        from segtool.pipeline.stream import Finished

        state = self.load(path)
        if not isinstance(state, Finished):
            state = self.infer(state)
        return state.value if isinstance(state, Finished) else self.finish(state)

    def load(self, path: Path):
        """Stage 1: read and normalise (a large image is only looked at: the network stage predicts it in bands)."""
        import time

        from segtool.io import read_image
        from segtool.unet.bigimage import open_lazy
        from segtool.unet.intake import reads_colour
        from segtool.unet.predict import normalize_for_model
        from segtool.volume.tasks import is_z_stack

        start = time.perf_counter()
        if is_z_stack(path, plane=self.plane, z_spacing=self.z_spacing):
            return {"stack_path": path}  # the network stage predicts it plane by plane
        model = self.model()
        outputs = self.planned_outputs(path)
        colour = model.config.channels == "rgb" or reads_colour(model.config.input)
        # bands read grey values and normalise with whole-image percentiles; they know no input transform
        plain = model.config.input == "intensity"
        if self.bands and not plain:
            raise InputError(f"--bands is not available with a model whose input transform is {model.config.input!r}")
        if colour:
            # a colour model reads R, G and B whole; band-by-band reading decodes one grey channel only
            if self.bands:
                raise InputError("--bands is not available with a colour (--channels rgb) model")
            if self.channel is not None:
                raise InputError("--channel picks one channel; a colour (--channels rgb) model reads R, G and B")
        if self.bands is not False and self.plane is None and not colour and plain:
            lazy = open_lazy(path, channel=self.channel)
            if lazy is not None:
                with lazy:
                    if self.bands or lazy.size > BAND_PIXELS:
                        return {"lazy_path": path, "outputs": outputs}
        image = read_image(path, channel=self.channel, plane=self.plane, memory=self.memory, colour=colour)
        if not colour and plain and (self.bands or (self.bands is None and image.data.size > BAND_PIXELS)):
            return {"large_image": image, "outputs": outputs}
        stages = {"read": time.perf_counter() - start}
        start = time.perf_counter()
        normalized = normalize_for_model(image.data, model, scale=self.scale)
        stages["normalize"] = time.perf_counter() - start
        return {"image": image, "normalized": normalized, "outputs": outputs, "stages": stages}

    def infer(self, state: dict[str, Any]):
        """Stage 2: the network, tile by tile (a large image: all of it, band by band, on this thread)."""
        from segtool.pipeline.stream import Finished
        from segtool.unet.bigimage import open_lazy
        from segtool.unet.predict import predict_maps

        if "stack_path" in state:
            from segtool.volume.tasks import predict_stack_task

            return Finished(predict_stack_task(self, state["stack_path"]))
        if "lazy_path" in state:
            with open_lazy(state["lazy_path"], channel=self.channel) as lazy:
                return Finished(self._run_bands(lazy, self.model(), state["outputs"]))
        if "large_image" in state:
            image = state["large_image"]
            return Finished(self._run_bands(image.data, self.model(), state["outputs"],
                                            calibration=(image.pixel_size, image.unit)))
        options = self._options()
        maps, n_tiles = predict_maps(
            state.pop("normalized"), self.model(), state["image"].data.shape[-2:], tile=options["tile"],
            overlap=options["overlap"], batch_size=options["batch_size"], tta=options["tta"],
            tile_halo=options["tile_halo"], stages=state["stages"],
        )
        state.update(maps=maps, n_tiles=n_tiles)
        return state

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Stage 3: objects from the maps, then the outputs."""
        import time

        import numpy as np

        from segtool.baseline import empty_image_reason
        from segtool.io import write_float, write_labels, write_png
        from segtool.overlay import outline_overlay
        from segtool.unet.instances import maps_to_labels
        from segtool.unet.predict import postprocess_options

        image, maps, outputs, stages = state["image"], state["maps"], state["outputs"], state["stages"]
        model = self.model()
        start = time.perf_counter()
        options = postprocess_options(model.config, prob_threshold=self.prob_threshold, min_size=self.min_size,
                                      seed_threshold=self.seed_threshold, split_height=self.split_height)
        labels = maps_to_labels(maps, target=model.config.target, **options)
        # An empty well: percentile normalisation would stretch its uneven illumination into a bright blob.
        empty_reason = empty_image_reason(image.data if image.data.ndim == 2 else image.data.mean(axis=0, dtype=np.float32))
        if empty_reason is not None:
            labels = np.zeros_like(labels)
        stages["postprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        calibration = {"pixel_size": image.pixel_size, "unit": image.unit, "overwrite": self.overwrite}
        write_labels(outputs["labels"], labels, **calibration)
        if self.save_prob:
            write_float(outputs["prob"], maps, **calibration)
        if self.save_overlay:
            write_png(outputs["overlay"], outline_overlay(image.data, labels), overwrite=self.overwrite)
        stages["write"] = time.perf_counter() - start
        n_objects = int(labels.max()) if labels.size else 0
        return {
            "objects": n_objects,
            "empty_reason": empty_reason,
            "tiles": state["n_tiles"],
            "predict_seconds": round(sum(stages.get(k, 0.0) for k in ("normalize", "network", "tiles", "postprocess")), 3),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
            "shape": list(image.data.shape),
            "bands": 0,
            "model": self.model_name or str(self.model_path),
        }

    def _run_bands(self, source, model, outputs: dict[str, Path], calibration=None) -> dict[str, Any]:
        from segtool.unet.bigimage import predict_file_in_bands

        if self.scale != 1.0:
            raise InputError("--scale/--diameter is not available for images predicted in bands (large images); add --no-bands")
        figures = predict_file_in_bands(
            source,
            model,
            outputs["labels"],
            prob_path=outputs.get("prob"),
            overlay_path=outputs.get("overlay"),
            overwrite=self.overwrite,
            band_rows=self.band_rows,
            halo=self.halo,
            **self._options(),
        )
        figures["predict_seconds"] = figures.pop("seconds")
        figures["model"] = self.model_name or str(self.model_path)
        return figures


def _device_type(model) -> str:
    from segtool.unet.predict import network_device_type

    return network_device_type(model.net)


def load_prepared(model_path: Path, *, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
    """Load a model file and prepare its network for inference (threads set for this process)."""
    from segtool.unet.predict import load_for_inference

    return load_for_inference(model_path, device=device, threads=threads, precision=precision)


@app.command(rich_help_panel="Segment")
def predict(
    images: Inputs,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model file from `segtool train`, or a shipped model's name (`segtool model list`: nuclei, nuclei-he). "
            "Default: nuclei, the shipped fluorescence model.",
            rich_help_panel=PANEL_MODEL,
            dir_okay=False,
        ),
    ] = None,
    output: OutputDir = None,
    device: Annotated[
        Device, typer.Option("--device", help="Where the network runs.", rich_help_panel=PANEL_MODEL, case_sensitive=False)
    ] = Device.auto,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help="CPU threads for the network (default: all cores).", rich_help_panel=PANEL_MODEL)
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="Network arithmetic: fp32, bf16 (bfloat16, faster on CPUs with AVX512-BF16/AMX and recent GPUs), "
            "or auto (bf16 where the hardware runs it natively).",
            rich_help_panel=PANEL_MODEL,
            case_sensitive=False,
        ),
    ] = Precision.auto,
    tile: Annotated[
        Optional[int],
        typer.Option(
            "--tile",
            min=16,
            help="Largest tile side in pixels, a multiple of 2**depth (default: 2048 on CPU, 4096 on CUDA; lower it to "
            "save memory). With --overlap: the tile size (default: the model's patch size).",
            rich_help_panel=PANEL_TILING,
        ),
    ] = None,
    tile_halo: Annotated[
        Optional[int],
        typer.Option(
            "--tile-halo",
            min=0,
            help="Network context kept around each tile's core, in pixels (default: the model's effective context, "
            "104 for the shipped model); tile cores then match whole-image inference within 1e-3.",
            rich_help_panel=PANEL_TILING,
        ),
    ] = None,
    overlap: Annotated[
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
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option("--batch-size", "-b", min=1, help="Tiles per network call (default: as many as fit 2048^2 pixels on CPU, 4096^2 on CUDA; 4 with --overlap).", rich_help_panel=PANEL_TILING, show_default=False),
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Test-time augmentation: average 8 flips/rotations (8x slower).", rich_help_panel=PANEL_TILING)
    ] = False,
    scale: Annotated[
        Optional[float],
        typer.Option("--scale", min=0.05, max=20.0, help="Resize images by this factor before the network; labels come back at the original size.", rich_help_panel=PANEL_TILING),
    ] = None,
    diameter: Annotated[
        Optional[float],
        typer.Option("--diameter", min=0.0, help="Typical object diameter in pixels; sets --scale from the model's training diameter.", rich_help_panel=PANEL_TILING),
    ] = None,
    prob_threshold: Annotated[
        Optional[float],
        typer.Option("--prob-threshold", min=0.0, max=1.0, help="Foreground probability threshold (default: the model's tuned value, else 0.5).", rich_help_panel=PANEL_POST),
    ] = None,
    seed_threshold: Annotated[
        Optional[float],
        typer.Option("--seed-threshold", min=0.0, max=1.0, help="Interior probability / distance above which a pixel seeds an object (default: the model's value).", rich_help_panel=PANEL_POST),
    ] = None,
    min_size: Annotated[
        Optional[int], typer.Option("--min-size", min=0, help="Remove objects smaller than this many pixels (default: the model's value).", rich_help_panel=PANEL_POST)
    ] = None,
    split_height: Annotated[
        Optional[float],
        typer.Option("--split-height", min=0.0, help="Split seed regions shaped like touching discs whose peaks stand this many pixels above the neck (default: the model's value; 0: no splitting).", rich_help_panel=PANEL_POST),
    ] = None,
    save_prob: Annotated[
        bool, typer.Option("--save-prob", help="Also write the probability maps (<stem>_prob.tif, float32, one plane per class).", rich_help_panel=PANEL_EXTRA)
    ] = False,
    save_overlay: Annotated[
        bool, typer.Option("--save-overlay", help="Also write outlines drawn on the image (<stem>_overlay.png).", rich_help_panel=PANEL_EXTRA)
    ] = False,
    bands: Annotated[
        Optional[bool],
        typer.Option(
            "--bands/--no-bands",
            help=f"Predict band by band with bounded memory and write tiled BigTIFF. Default: for images over {BAND_PIXELS // 2**20} Mpixel.",
            rich_help_panel=PANEL_LARGE,
            show_default=False,
        ),
    ] = None,
    band_rows: Annotated[
        Optional[int], typer.Option("--band-rows", min=16, help="Rows per band (default: from the image width).", rich_help_panel=PANEL_LARGE)
    ] = None,
    halo: Annotated[
        int, typer.Option("--halo", min=0, help="Context around each band (rows) or block (pixels, --block-size); objects up to 4x this tall are never cut by a band, objects under half of it are never cut by a block.", rich_help_panel=PANEL_LARGE)
    ] = 128,
    channel: Channel = None,
    plane: Plane = None,
    z_spacing: ZSpacing = None,
    z_mode: ZMode = "auto",
    stitch_threshold: StitchThreshold = 0.25,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    skip_existing: SkipExisting = False,
    json_out: JsonOut = False,
    manifest: Manifest = None,
    on_error: OnErrorOpt = OnError.skip,
    jobs: Jobs = 1,
    max_memory: MaxMemory = None,
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
    from segtool.unet.predict import scale_for_diameter
    from segtool.unet.shipped import resolve_model

    if scale is not None and diameter is not None:
        fail("give --scale or --diameter, not both", code=EXIT_USAGE)
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # parallel images share the cores instead of each taking all
    if threads is None and (cluster is not None or block_size is not None):
        from segtool.distributed.cluster import parse_cluster, threads_per_local_worker

        try:  # the workers of a local cluster share this machine's cores
            threads = threads_per_local_worker(parse_cluster(cluster or "local"))
        except SegtoolError:
            pass  # run_files reports a bad --cluster value (exit 2)
    try:
        model_path, model_name = resolve_model(model)
    except SegtoolError as err:
        fail(first_line(err), code=EXIT_USAGE)
    try:
        loaded = load_prepared(model_path, device=device.value, threads=threads, precision=precision.value)
        factor = scale_for_diameter(loaded, diameter) if diameter is not None else (scale or 1.0)
    except SegtoolError as err:
        fail(first_line(err), where=str(model_path), code=EXIT_USAGE)
    if tile is not None or tile_halo is not None:
        from segtool.unet.predict import network_device_type, plan_inference_tiles

        try:  # a tile the halo leaves no core in is a usage error, found before any image is read
            side = 4 * (tile or 2048)
            plan_inference_tiles(loaded.config, (side, side), device_type=network_device_type(loaded.net), tile=tile,
                                 overlap=overlap, tile_halo=tile_halo)
        except SegtoolError as err:
            fail(first_line(err), code=EXIT_USAGE)
    if block_size is not None:
        tile_side = tile if tile is not None else int(loaded.config.patch_size)
        if block_size < tile_side:
            fail(f"--block-size ({block_size}) must be at least the tile size ({tile_side}; see --tile)", code=EXIT_USAGE)
        refused = [name for name, on in (("--save-prob", save_prob), ("--save-overlay", save_overlay),
                                         ("--scale/--diameter", factor != 1.0), ("--bands", bool(bands))) if on]
        if refused:
            fail(f"{', '.join(refused)}: not available in big-image mode (--block-size)", code=EXIT_USAGE)
        from segtool.distributed.big_tasks import BigPredictTask

        # Big-image mode plans its blocks on the blended tile grid.
        options = {"tile": tile, "overlap": 0.25 if overlap is None else overlap, "batch_size": batch_size or 4, "tta": tta,
                   "prob_threshold": prob_threshold, "min_size": min_size, "seed_threshold": seed_threshold,
                   "split_height": split_height}
        task = BigPredictTask(model_path=model_path, block_size=block_size, halo=halo, zarr=zarr, output_dir=output,
                              overwrite=overwrite, options=options, device=device.value, threads=threads,
                              channel=channel, plane=plane, precision=precision.value)
    elif zarr:
        fail("--zarr writes big-image mode's labels: add --block-size N", code=EXIT_USAGE)
    else:
        task = PredictTask(
            model_path=model_path,
            device=device.value,
            threads=threads,
            precision=precision.value,
            output_dir=output,
            overwrite=overwrite,
            tile=tile,
            overlap=overlap,
            tile_halo=tile_halo,
            batch_size=batch_size,
            tta=tta,
            scale=float(factor),
            prob_threshold=prob_threshold,
            min_size=min_size,
            seed_threshold=seed_threshold,
            split_height=split_height,
            save_prob=save_prob,
            save_overlay=save_overlay,
            bands=bands,
            band_rows=band_rows,
            halo=halo,
            channel=channel,
            plane=plane,
            model_name=model_name,
            # Band mode (automatic over BAND_PIXELS) keeps memory bounded: then only the decoded image counts.
            memory=memory_budget(
                max_memory, "predict", jobs=jobs, streamed_above=None if bands is False else BAND_PIXELS,
                way_out="drop --no-bands (large images are then predicted band by band)" if bands is False
                else "save it as a TIFF, which predict reads band by band",
            ),
            z_spacing=z_spacing,
            z_mode=z_mode,
            stitch_threshold=stitch_threshold,
        )
        task.use_model(loaded)
    run_files(
        images,
        task,
        kind="image",
        recursive=recursive,
        on_error=on_error,
        skip_existing=skip_existing,
        overwrite=overwrite,
        jobs=jobs,
        cluster=cluster,
        big=block_size is not None,
        json_out=json_out,
        manifest=manifest,
        quiet=quiet,
        debug=debug,
        columns=_COLUMNS,
        verb="predict",
    )
