"""3-D prediction of a Z stack with a 2-D U-Net: per plane (batched across planes), then 3-D objects.

Two ways to turn the per-plane network maps into 3-D objects:

``"stitch"``
    Each plane is labelled on its own (the model's tuned post-processing),
    then objects of consecutive planes are linked by IoU
    (:class:`segtool.volume.stitch.PlaneStitcher`). Needs two planes in
    memory, so any stack streams from file to file.
``"watershed"``
    The foreground and seed maps of all planes form 3-D maps; seeds are the
    3-D regions where the network's distance map is high, split by the
    h-maxima of their anisotropic distance transform, and grown by a 3-D
    watershed within the foreground. Holds the maps of the whole stack.

The whole stack shares one intensity normalisation (the model's percentiles
measured over the stack), so planes above and below the cells, nearly empty,
are not stretched into false objects.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from segtool.errors import InputError
from segtool.labels import label_dtype
from segtool.normalize import map_to_unit
from segtool.pipeline.options import ObjectOptions, TileOptions
from segtool.pipeline.percentiles import sample_percentiles
from segtool.pipeline.write import RowSpool
from segtool.infer.sizing import min_size_at_scale, resize_channels
from segtool.volume.stitch import STITCH_THRESHOLD

__all__ = ["STACK_MODES", "StackPredictOptions", "model_planes", "stack_percentiles", "predict_stack_maps", "maps_to_labels_3d",
           "predict_stack", "predict_stack_file"]

#: Values of ``mode``.
STACK_MODES = ("auto", "stitch", "watershed")

#: ``mode="auto"`` uses ``"watershed"`` (more accurate: it splits nuclei that touch along z, which
#: stitching merges) up to this many voxels, and ``"stitch"`` (memory bounded by planes) above. The
#: watershed holds several stack-sized arrays: at 2**25 voxels (512 x 512 x 128) its peak RSS was
#: 3281 MiB (BENCHMARKS.md), so "auto" stops at half that size.
WATERSHED_MAX_VOXELS = 1 << 24

# "watershed" defaults (the model's tuned values are for 2-D): seeds where the network's distance
# map exceeds 0.3, objects of at least 100 voxels. On synthetic stacks of seeds 100-101 (tuning
# seeds; reports use 0-4) seed threshold 0.2 / 0.3 / 0.5 gave F1@0.5 0.951 / 0.988 / 0.919 at
# 100 voxels, and 100 / 200 / 400 voxels gave 0.988 / 0.988 / 0.994 at 0.3 (100 kept: smaller
# nuclei than these ~2000-voxel ones must survive it).
WATERSHED_SEED_THRESHOLD = 0.3
WATERSHED_MIN_SIZE = 100


@dataclass(frozen=True)
class StackPredictOptions:
    """How a Z stack is predicted: the 3-D mode, and the 2-D tiling and object options of its planes.

    Attributes
    ----------
    mode : {"auto", "stitch", "watershed"}
        See the module docstring. ``"auto"`` (default): ``"watershed"`` up
        to :data:`WATERSHED_MAX_VOXELS` voxels, ``"stitch"`` above.
    stitch_threshold : float
        IoU needed to continue an object into the next plane (``"stitch"``).
    tiling : TileOptions
        As for 2-D prediction, on blended tiles (:meth:`TileOptions.blended`
        fills in the overlap and batch size); ``batch_size`` planes go through
        the network together when a plane fits in one tile. ``scale`` resizes
        each plane before the network (maps come back at the plane's size;
        default ``min_size`` values follow the area); None estimates it once
        per stack from the middle plane (:func:`stack_scale`).
    objects : ObjectOptions
        Override the model's tuned post-processing (per plane for
        ``"stitch"``). ``"watershed"`` uses the model's ``prob_threshold``
        and its own defaults ``seed_threshold`` 0.3 and ``min_size`` 100
        voxels (see :data:`WATERSHED_SEED_THRESHOLD`).

    Examples
    --------
    >>> StackPredictOptions().tiling
    TileOptions(tile=None, overlap=0.25, tile_halo=None, batch_size=4, tta=False, scale=1.0)
    """

    mode: str = "auto"
    stitch_threshold: float = STITCH_THRESHOLD
    tiling: TileOptions = TileOptions()
    objects: ObjectOptions = ObjectOptions()

    def __post_init__(self) -> None:
        if self.mode not in STACK_MODES:
            raise InputError(f"3-D mode must be one of {', '.join(STACK_MODES)}, got {self.mode!r}")
        if not 0 < float(self.stitch_threshold) <= 1:
            raise InputError(f"stitch threshold must be in (0, 1], got {self.stitch_threshold}")
        # Planes are tiled with blended overlap (2-D prediction's halo tiling is not used for stacks yet).
        object.__setattr__(self, "tiling", self.tiling.blended())

    def resolved(self, n_voxels: int) -> str:
        """The mode used for a stack of ``n_voxels`` (``"auto"`` decided by size)."""
        if self.mode != "auto":
            return self.mode
        return "watershed" if n_voxels <= WATERSHED_MAX_VOXELS else "stitch"

    @property
    def scale(self) -> float:
        """The planes' resize factor (1.0 while it is still to be estimated)."""
        return 1.0 if self.tiling.scale is None else float(self.tiling.scale)

    def at_scale(self, scale: float) -> StackPredictOptions:
        """These options with the planes resized by ``scale`` (once the estimate is made)."""
        return replace(self, tiling=replace(self.tiling, scale=scale))


def stack_percentiles(planes: Iterable[np.ndarray], low: float, high: float, *, max_samples: int = 1 << 22) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of a stack, from a regular subsample of its planes.

    Examples
    --------
    >>> stack_percentiles([np.arange(10.0).reshape(2, 5)] * 3, 0, 100)
    (0.0, 9.0)
    """
    planes = list(planes)
    if not planes:
        raise InputError("stack has no planes")
    per_plane = max(1, max_samples // len(planes))
    samples = []
    for plane in planes:
        step = max(1, math.isqrt(max(1, plane.size // per_plane)))
        samples.append(np.asarray(plane[::step, ::step], dtype=np.float32).reshape(-1))
    lo, hi = sample_percentiles(np.concatenate(samples), [low, high])  # the shared rule (and NaN check)
    return float(lo), float(hi)


def _predictor(model, tta: bool):
    from segtool.infer.network import make_predictor, prepared_net

    return make_predictor(prepared_net(model), model.config.target, tta=tta)


def _pad_to(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) padded at the end of y and x to ``shape`` (reflected where the plane allows)."""
    pads = [(0, 0), (0, shape[0] - plane.shape[1]), (0, shape[1] - plane.shape[2])]
    mode = "reflect" if all(p[1] < n for p, n in zip(pads[1:], plane.shape[1:])) else "symmetric"
    return np.pad(plane, pads, mode=mode)


def predict_stack_maps(
    planes: Iterable[np.ndarray],
    model,
    *,
    norm: tuple[float, float],
    options: StackPredictOptions = StackPredictOptions(),
    on_plane: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Network maps of each (Y, X) plane, in order, normalised with ``norm`` = (low, high) values.

    ``planes`` and ``norm`` are those of the stack after the model's input
    transform (:func:`model_planes`).

    Planes that fit in one tile are sent ``options.tiling.batch_size`` at a time in
    one network call; larger planes are tiled one by one
    (:func:`segtool.pipeline.tiling.predict_tiled`).

    Yields
    ------
    maps : (C, Y, X) ndarray of float32
    """
    from segtool.pipeline.options import resolve_tile
    from segtool.pipeline.tiling import predict_tiled

    config = model.config
    predictor = _predictor(model, options.tiling.tta)
    lo, hi = norm
    resize = 1.0 if options.scale is None else float(options.scale)
    batch: list[np.ndarray] = []
    tile_hw: tuple[int, int] | None = None
    plane_hw: tuple[int, int] | None = None
    done = 0

    def back(maps: np.ndarray) -> np.ndarray:
        return maps if resize == 1.0 else resize_channels(maps, plane_hw)

    def flush() -> Iterator[np.ndarray]:
        nonlocal done
        if not batch:
            return
        h, w = batch[0].shape[1:]
        stacked = np.stack([_pad_to(p, tile_hw) for p in batch])
        maps = predictor(stacked)
        batch.clear()
        for m in maps:
            done += 1
            if on_plane is not None:
                on_plane(done)
            yield back(np.ascontiguousarray(m[:, :h, :w]))

    for plane in planes:
        data = np.asarray(plane)
        if data.ndim != 2:
            raise InputError(f"plane must be 2-D, got shape {data.shape}")
        if config.in_channels != 1:
            raise InputError(f"3-D prediction needs a single-channel model; this one takes {config.in_channels} channels")
        normalized = map_to_unit(data, lo, hi)[np.newaxis]  # the stack's percentiles, as every schedule maps them
        plane_hw = data.shape
        if resize != 1.0:
            normalized = resize_channels(normalized, (max(1, round(data.shape[0] * resize)),
                                                      max(1, round(data.shape[1] * resize))))
        tile_hw = resolve_tile(config, normalized.shape[1:], options.tiling.tile)
        if tile_hw[0] >= normalized.shape[1] and tile_hw[1] >= normalized.shape[2]:
            batch.append(normalized)
            if len(batch) >= options.tiling.batch_size:
                yield from flush()
            continue
        yield from flush()
        maps = predict_tiled(normalized, predictor, tile=tile_hw, overlap=options.tiling.overlap,
                             batch_size=options.tiling.batch_size, out_channels=config.out_channels)
        done += 1
        if on_plane is not None:
            on_plane(done)
        yield back(maps)
    yield from flush()


def _watershed_3d(foreground: np.ndarray, seed_map: np.ndarray, *, seed_threshold: float, min_size: int,
                  z_spacing: float) -> np.ndarray:
    """3-D objects from stacked per-plane foreground and distance maps."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from segtool.volume.baseline import relabel_sequential_3d, split_touching_3d

    regions = foreground & (seed_map > np.float32(seed_threshold))
    markers = split_touching_3d(regions, z_spacing=z_spacing)  # one seed per ball-like part of the seed region
    elevation = -seed_map.astype(np.float32)
    labels = watershed(elevation, markers, mask=foreground, connectivity=3)
    rest = foreground & (labels == 0)
    if rest.any():
        extra, _ = ndi.label(rest, structure=np.ones((3, 3, 3), bool))
        labels[rest] = extra[rest] + int(labels.max())
    return relabel_sequential_3d(labels, min_size=min_size)


def model_planes(planes: Iterable[np.ndarray], config) -> Iterator[np.ndarray]:
    """The planes as the model reads them: after its input transform, plane by plane.

    ``inverted`` works pixel by pixel, so planes give what the whole stack
    gives. ``hematoxylin`` is refused: stacks are read as grey planes (an RGB
    stack averaged), and its optical density needs the colours.

    Raises
    ------
    InputError
        For the ``hematoxylin`` transform.
    """
    from segtool.intake import apply_input_transform

    if config.input == "hematoxylin":
        raise InputError("3-D prediction reads grey planes; the model's input transform 'hematoxylin' needs R, G and B")
    for plane in planes:
        yield apply_input_transform(plane, config.input) if config.input != "intensity" else plane


def predict_stack(
    image: np.ndarray,
    model,
    *,
    z_spacing: float = 1.0,
    options: StackPredictOptions = StackPredictOptions(),
    on_plane: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Segment a (Z, Y, X) stack in memory with a 2-D model; returns 3-D labels.

    Parameters
    ----------
    image : (Z, Y, X) ndarray
    model : LoadedModel
    z_spacing : float, optional
        Anisotropy (used by ``"watershed"``).
    options : StackPredictOptions, optional
    on_plane : callable, optional
        ``on_plane(planes_done)`` after each plane's network pass.

    Returns
    -------
    labels : (Z, Y, X) ndarray of uint16 (uint32 above 65535 objects)

    Raises
    ------
    InputError
        For a stack that is not 3-D or a model with several input channels.
    """
    data = np.asarray(image)
    if data.ndim != 3 or data.size == 0:
        raise InputError(f"stack must be 3-D (Z, Y, X), got shape {data.shape}")
    config = model.config
    planes = list(model_planes(data, config))
    norm = stack_percentiles(planes, config.norm_low, config.norm_high)
    if options.tiling.scale is None:
        size = stack_scale(planes[len(planes) // 2], model, norm=norm, options=options)
        options = options.at_scale(1.0 if size is None else size.scale)
    maps = predict_stack_maps(planes, model, norm=norm, options=options, on_plane=on_plane)
    options = replace(options, mode=options.resolved(data.size))
    return maps_to_labels_3d(maps, model.config, z_spacing=z_spacing, options=options)


def maps_to_labels_3d(
    maps: Iterable[np.ndarray],
    config,
    *,
    z_spacing: float = 1.0,
    options: StackPredictOptions = StackPredictOptions(),
) -> np.ndarray:
    """3-D labels from the per-plane network maps of a stack (in plane order).

    Parameters
    ----------
    maps : iterable of (C, Y, X) ndarray
        From :func:`predict_stack_maps`.
    config : UNetConfig
        The model's configuration (target type and tuned post-processing).
    z_spacing : float, optional
    options : StackPredictOptions, optional

    Returns
    -------
    labels : (Z, Y, X) ndarray of uint16 (uint32 above 65535 objects)
    """
    from segtool.infer.instances import maps_to_labels
    from segtool.volume.stitch import PlaneStitcher

    post = plane_postprocess(config, options)
    if options.mode == "stitch":  # "auto" is resolved by the callers, who know the stack's size
        stitcher = PlaneStitcher(options.stitch_threshold)
        out = np.stack([stitcher.add(maps_to_labels(m, target=config.target, **post)) for m in maps])
        return out.astype(label_dtype(stitcher.n_labels), copy=False)
    foreground, seed_map = [], []
    for m in maps:
        fg, seed = _fg_and_seed(m, config.target, post)
        foreground.append(fg)
        seed_map.append(seed.astype(np.float32))
    objects = options.objects
    seed_threshold = WATERSHED_SEED_THRESHOLD if objects.seed_threshold is None else objects.seed_threshold
    min_size = objects.min_size
    if min_size is None:
        min_size = min_size_at_scale(WATERSHED_MIN_SIZE, options.scale)
    return _watershed_3d(np.stack(foreground), np.stack(seed_map), seed_threshold=seed_threshold,
                         min_size=int(min_size), z_spacing=z_spacing)


def plane_postprocess(config, options: StackPredictOptions) -> dict:
    """Per-plane post-processing keywords: the model's tuned values, ``options``' overrides, and the model's
    minimum sizes following ``options.scale`` (:func:`segtool.infer.predict.scaled_objects`)."""
    from segtool.infer.predict import scaled_objects

    return scaled_objects(options.objects, config, options.scale)


def stack_scale(middle: np.ndarray, model, *, norm: tuple[float, float],
                options: StackPredictOptions = StackPredictOptions()):
    """The size estimate of a stack, from one (Y, X) plane (the middle one) normalised with the stack's ``norm``.

    Returns a :class:`segtool.infer.sizing.SizeEstimate`, or None when the
    model does not record its training diameter.
    """
    from segtool.infer.predict import model_diameter
    from segtool.infer.sizing import estimate_for_model

    trained = model_diameter(model)
    if trained is None:
        return None
    normalized = map_to_unit(middle, *norm)[np.newaxis]
    return estimate_for_model(normalized, model, objects=options.objects.resolve(model.config), trained_diameter=trained)


def _open_spool(folder: Path, width: int) -> RowSpool:
    from segtool.errors import OutputError

    try:
        return RowSpool(folder, width, np.uint32)
    except OSError as err:
        raise OutputError(f"{folder}: cannot write temporary files: {err.strerror or err}") from err


def _fg_and_seed(maps: np.ndarray, target: str, post: dict) -> tuple[np.ndarray, np.ndarray]:
    prob = float(post.get("prob_threshold", 0.5))
    if target in ("three_class", "three_class_distance"):
        foreground = maps[0] < np.float32(1.0 - prob)
        seed = maps[1] if target == "three_class" else maps[3]
    else:
        foreground = maps[0] > np.float32(prob)
        seed = maps[1]
    return foreground, seed


def predict_stack_file(
    path: str | os.PathLike,
    model,
    out_path: str | os.PathLike,
    *,
    channel: int | None = None,
    z_spacing: float | None = None,
    options: StackPredictOptions = StackPredictOptions(),
    overwrite: bool = False,
    overlay_path: str | os.PathLike | None = None,
    on_plane: Callable[[int, int], None] | None = None,
) -> dict:
    """Segment a Z-stack file plane by plane and write its calibrated 3-D label TIFF.

    With ``mode="stitch"`` memory stays at a few planes whatever the stack's
    depth: planes are read one at a time, stitched labels go to a hidden
    spool file beside ``out_path`` (uint32, :class:`segtool.pipeline.write.RowSpool`), and the final TIFF is written
    from it plane by plane, as uint16 when the labels fit. ``"watershed"``
    loads the stack. ``overlay_path`` gets a PNG of the middle plane's outlines.

    Returns
    -------
    dict
        ``objects``, ``planes``, ``shape``, ``voxel_size``, ``seconds``, ``mode``.

    Raises
    ------
    InputError, OutputError
        Unreadable stack, or an output that exists without ``overwrite``.
    """
    from segtool.io import check_output_free
    from segtool.volume.io import resolve_voxel_size, anisotropy, iter_planes
    from segtool.volume.writers import write_label_volume

    start = time.perf_counter()
    out_path = Path(out_path)
    check_output_free(out_path, overwrite=overwrite)
    info, _ = iter_planes(path, channel=channel, z_spacing=z_spacing)
    voxel_size, unit = resolve_voxel_size(info, z_spacing)
    depth = info.n_planes
    plane_pixels = info.shape[info.axes.index("Y")] * info.shape[info.axes.index("X")]
    options = replace(options, mode=options.resolved(depth * plane_pixels))
    progress = (lambda n: on_plane(n, depth)) if on_plane is not None else None
    write = functools.partial(write_label_volume, out_path, voxel_size=voxel_size, unit=unit, overwrite=overwrite)
    segment = _segment_whole_stack if options.mode == "watershed" else _segment_plane_by_plane
    run = segment(path, model, depth=depth, channel=channel, z_spacing=z_spacing, options=options, progress=progress,
                  write=write, folder=out_path.parent)
    options, size = run.options, run.size  # at the scale used; the size estimate, if any
    if overlay_path is not None:
        from segtool.io import write_png
        from segtool.overlay import outline_overlay

        write_png(overlay_path, outline_overlay(*run.middle), overwrite=overwrite)
    return {
        "objects": int(run.n_objects),
        "planes": int(depth),
        "shape": [int(v) for v in run.shape],
        "voxel_size": [float(v) for v in voxel_size] if voxel_size is not None else None,
        "z_spacing": round(anisotropy(voxel_size), 6),
        "mode": options.mode,
        "scale": round(options.scale, 4),
        "diameter": None if size is None or size.diameter is None else round(size.diameter, 2),
        "diameter_source": None if size is None else "estimated",
        "seconds": round(time.perf_counter() - start, 3),
    }


@dataclass(frozen=True)
class _Segmented:
    """What :func:`predict_stack_file` reports of a stack segmented and written by one of the two modes."""

    shape: tuple[int, ...]
    n_objects: int
    middle: tuple[np.ndarray, np.ndarray]  # the middle plane and its labels (for the overlay)
    options: StackPredictOptions  # at the scale used
    size: object = None  # the size estimate, when the scale was estimated


def _segment_whole_stack(path, model, *, depth: int, channel, z_spacing, options: StackPredictOptions, progress,
                         write: Callable[..., object], folder: Path) -> _Segmented:
    """``"watershed"``: the stack read whole, 3-D objects from the maps of all planes, written by ``write``."""
    from segtool.volume.io import read_volume

    volume = read_volume(path, channel=channel, z_spacing=z_spacing)
    size = None
    if options.tiling.scale is None:
        planes_in = list(model_planes(volume.data, model.config))
        size = stack_scale(planes_in[depth // 2], model, options=options,
                           norm=stack_percentiles(planes_in, model.config.norm_low, model.config.norm_high))
        options = options.at_scale(1.0 if size is None else size.scale)
        del planes_in
    labels = predict_stack(volume.data, model, z_spacing=volume.z_spacing, options=options, on_plane=progress)
    write(labels)
    return _Segmented(labels.shape, int(labels.max()), (volume.data[depth // 2], labels[depth // 2]), options, size)


def _stack_sample(path, config, *, depth: int, channel, z_spacing, centre: bool) -> tuple[tuple[float, float], np.ndarray | None]:
    """One pass over a subsample of the planes: the stack's normalisation, and the middle plane if ``centre``."""
    from segtool.volume.io import iter_planes

    every = max(1, depth // 16)
    _, planes = iter_planes(path, channel=channel, z_spacing=z_spacing)
    sample, middle = [], None
    for z, p in enumerate(model_planes(planes, config)):
        if z % every == 0:
            sample.append(p[::4, ::4].copy())
        if z == depth // 2 and centre:
            middle = np.array(p, copy=True)
    return stack_percentiles(sample, config.norm_low, config.norm_high), middle


def _segment_plane_by_plane(path, model, *, depth: int, channel, z_spacing, options: StackPredictOptions, progress,
                            write: Callable[..., object], folder: Path) -> _Segmented:
    """``"stitch"``: planes streamed from the file, labelled and stitched one at a time, spooled (uint32) in
    ``folder``, and written by ``write`` from the spool plane by plane."""
    from segtool.infer.instances import maps_to_labels
    from segtool.volume.io import iter_planes
    from segtool.volume.stitch import PlaneStitcher

    config = model.config
    norm, centre = _stack_sample(path, config, depth=depth, channel=channel, z_spacing=z_spacing,
                                 centre=options.tiling.scale is None)
    size = None
    if options.tiling.scale is None:
        size = stack_scale(centre, model, norm=norm, options=options)
        options = options.at_scale(1.0 if size is None else size.scale)
        del centre
    post = plane_postprocess(config, options)
    stitcher = PlaneStitcher(options.stitch_threshold)
    folder.mkdir(parents=True, exist_ok=True)
    spool: RowSpool | None = None  # the stitched planes, one after another (uint32), until the TIFF is written
    try:
        plane_shape = None
        middle_image: list[np.ndarray] = []

        def keep_middle(planes: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for z, plane in enumerate(planes):
                if z == depth // 2:
                    middle_image.append(plane)
                yield plane

        _, planes = iter_planes(path, channel=channel, z_spacing=z_spacing)
        for z, maps in enumerate(predict_stack_maps(model_planes(keep_middle(planes), config), model, norm=norm,
                                                    options=options, on_plane=progress)):
            labels2d = stitcher.add(maps_to_labels(maps, target=config.target, **post))
            if z == depth // 2:
                middle = (middle_image[0], labels2d)
            plane_shape = labels2d.shape
            if spool is None:
                spool = _open_spool(folder, plane_shape[1])
            spool.append(labels2d)
            del maps
        dtype = label_dtype(stitcher.n_labels)
        rows = plane_shape[0]

        def read_back() -> Iterator[np.ndarray]:
            for z in range(depth):
                yield spool.read(z * rows, (z + 1) * rows).astype(dtype)

        write(read_back(), shape=(depth, *plane_shape), dtype=dtype)
    finally:
        if spool is not None:
            spool.close()
    return _Segmented((depth, *plane_shape), stitcher.n_labels, middle, options, size)
