"""Big-image U-Net prediction on a Dask cluster: blocks with a halo, then one merge.

:func:`predict_blocks` segments a 2-D image that need not fit in one machine's
memory. The image is a (lazy) Dask array, read and processed block by block on
the workers; only small tables reach the client.

1. **Normalisation** uses the whole image's percentiles (the model's
   ``norm_low`` and ``norm_high``), from a distributed reduction,
   :func:`segtool.pipeline.percentiles.dask_percentiles`: exact (a histogram) for integer images of up to
   16 bits, a regular subsample otherwise. Per-block percentiles would give
   every block its own contrast, and so its own objects.
2. **Per block** a task segments the block's *window* (the block plus
   ``halo`` pixels on every side, clipped at the image border). It runs the
   in-memory path's pieces: the tiles of the *whole image's* tile grid that
   touch the window (as :func:`segtool.infer.predict.predict_image` would lay
   them out), blended in the same order, so the window's network maps are the
   in-memory run's; then :func:`segtool.infer.instances.maps_to_labels` on the
   window. It keeps the labels of its *core* (the block) and four thin *seam
   strips* across the core's edges; these results stay on the workers.
3. **Merge.** For each pair of neighbouring blocks, a task compares their
   labels on the strip both windows cover, ``halo // 2`` pixels on each side
   of the shared edge (every compared pixel had at least that much context in
   both windows). Label ``a`` of the first block and ``b`` of the second are
   one object when both reach the edge in their own core (a pixel within
   :data:`SEAM_REACH` of it) and they share at least half of the smaller
   one's strip pixels. The client joins these pairs with union-find
   (connected components of the pair graph), drops assembled objects smaller
   than ``min_size`` and numbers the rest 1..N.
4. **Relabel.** A lookup table per block maps its labels to the final ones;
   :attr:`BlockPrediction.labels` applies them block by block, lazily, so
   workers can write the result (``labels.to_zarr(...)``) without it passing
   through the client.

Why matching rather than the ownership rule of :mod:`segtool.pipeline.bands`
(each object painted whole by the band holding its top row): in 2-D the
anchor pixel of an object near an edge can fall on different sides in the two
windows (the object is then painted twice or not at all), and ownership cuts
every object taller or wider than the halo. With matching each block paints
only its core, so nothing is painted twice, and an object crossing any number
of blocks is joined edge by edge into one.

Limits
------
- An object smaller than ``halo // 2`` is seen whole, with its neighbours,
  by both windows at each edge it crosses, so both label it as the in-memory
  run does (the test mosaics match that run exactly). A larger object is still one object, but its pieces were
  post-processed in windows that cut it: a piece whose seed lies outside the
  window may be split off, or flooded from a neighbour's seed. Make ``halo``
  at least twice the largest object's diameter.
- Where the two windows divide touching objects differently (one splits,
  the other merges), the pieces that meet the edge are joined, so the
  merged reading wins for that object.
- With ``halo=0`` the windows do not overlap: labels are compared across the
  edge (last row of one block against the first of the next), so touching
  objects that meet along an edge are joined. Use it for sparse objects only.
- :attr:`BlockPrediction.labels` refers to block results kept on the
  workers: compute or write it while the client that ran
  :func:`predict_blocks` is connected.

The model file must be readable at the same path on every worker; each worker
process loads it once (:func:`_load_model`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, ModelError
from segtool.normalize import map_to_unit
from segtool.pipeline.blend import add_weighted, predict_in_batches
from segtool.pipeline.options import ObjectOptions, TileOptions
from segtool.pipeline.percentiles import dask_percentiles
from segtool.pipeline.seams import join_pieces, number_objects, overlap_pairs

__all__ = ["BlockPrediction", "predict_blocks"]

#: Labels must reach within this many pixels of a block edge (in their own core) to be joined across it.
SEAM_REACH = 3


@dataclass
class BlockPrediction:
    """What :func:`predict_blocks` returns.

    Attributes
    ----------
    labels : (H, W) dask.array.Array of uint32
        Instance labels, 0 background, objects numbered 1..n_objects; chunks
        of ``block`` x ``block`` (smaller at the far edges). Lazy: computing
        it relabels the block results kept on the workers.
    n_objects : int
        Objects in ``labels``.
    blocks : int
        Blocks the image was cut into.
    joined : int
        Objects assembled from pieces in more than one block.
    percentiles : (float, float)
        The image values mapped to 0 and 1 by the normalisation.
    block, halo : int
        The block size and halo used.
    seconds_predict : float
        Wall time of the normalisation percentiles and the per-block
        segmentation (all blocks).
    seconds_merge : float
        Wall time of the merge: seam tables, union-find, lookup tables.
    seconds : float
        Wall time of the whole call (excludes computing ``labels``).
    """

    labels: Any
    n_objects: int
    blocks: int
    joined: int
    percentiles: tuple[float, float]
    block: int
    halo: int
    seconds_predict: float
    seconds_merge: float
    seconds: float


# --------------------------------------------------------------------------- per-block segmentation


def _load_model(path: str, device: str, threads: int | None, precision: str = "fp32"):
    """The inference-prepared model, loaded once per worker process.

    Torch modules are not shipped through the task graph (large to pickle,
    not always picklable): each worker loads the file itself, once for all its
    blocks (:func:`segtool.infer.network.load_for_inference_cached`).
    """
    from segtool.infer.network import load_for_inference_cached

    return load_for_inference_cached(path, device=device, threads=threads, precision=precision)


@dataclass(frozen=True)
class _BlockPlan:
    """Where one block reads, predicts and keeps pixels.

    ``region`` (image coordinates) is what the block reads: every tile of the
    whole image's tile grid that touches its ``window``, whose start offsets
    per axis, relative to the region, are ``tiles``. ``pad`` is reflection
    padding after the region, as :func:`segtool.pipeline.tiling.predict_tiled`
    adds to an image shorter than a tile. ``window`` (region coordinates) is
    the block plus its halo, post-processed together; ``core`` and ``seams``
    (window coordinates) are the block itself and the strips compared with
    the neighbours (keyed "top", "bottom", "left", "right").
    """

    region: tuple[slice, slice]
    pad: tuple[tuple[int, int], tuple[int, int]]
    tiles: tuple[tuple[int, ...], tuple[int, ...]]
    window: tuple[slice, slice]
    core: tuple[slice, slice]
    seams: dict[str, tuple[slice, slice]] = field(hash=False)


def _blend_tiles(data: np.ndarray, predictor, plan: _BlockPlan, tile: tuple[int, int], *, batch_size: int, out_channels: int) -> np.ndarray:
    """Blended maps of ``plan.window`` from the plan's tiles of a (C, h, w) region.

    The same sums as :func:`segtool.pipeline.tiling.predict_tiled_rows` makes on
    the whole image, tile by tile in the same row-major order, so each pixel's
    maps are the in-memory run's.
    """
    from segtool.pipeline.tiling import blend_window

    weight_tile = blend_window(tile)
    acc = np.zeros((out_channels,) + data.shape[1:], np.float32)
    weight = np.zeros(data.shape[1:], np.float32)
    corners = [(y, x) for y in plan.tiles[0] for x in plan.tiles[1]]
    batches = predict_in_batches(corners, lambda c: data[:, c[0] : c[0] + tile[0], c[1] : c[1] + tile[1]], predictor,
                                 batch_size=batch_size, out_channels=out_channels)
    for batch, maps in batches:
        places = [(slice(y, y + tile[0]), slice(x, x + tile[1])) for y, x in batch]
        add_weighted(acc, weight, maps, places, weight_tile)
    return acc[(slice(None),) + plan.window] / weight[plan.window]


@dataclass(frozen=True)
class _UNetSegmenter:
    """Picklable ``(normalised region, plan) -> window labels``: a model path and options, no torch objects."""

    model_path: str
    device: str
    threads: int | None
    tile: tuple[int, int]
    batch_size: int
    tta: bool
    options: dict[str, Any] = field(hash=False)
    precision: str = "fp32"

    def __call__(self, normalized: np.ndarray, plan: _BlockPlan) -> np.ndarray:
        from segtool.infer.instances import maps_to_labels
        from segtool.infer.network import make_predictor
        from segtool.pipeline.tiling import pad_reflect

        model = _load_model(self.model_path, self.device, self.threads, self.precision)
        config = model.config
        data = pad_reflect(normalized[np.newaxis], list(plan.pad))
        predictor = make_predictor(model.net, config.target, tta=self.tta)
        maps = _blend_tiles(data, predictor, plan, self.tile, batch_size=self.batch_size, out_channels=config.out_channels)
        return maps_to_labels(maps, target=config.target, **self.options)


@dataclass
class _BlockLabels:
    """One block's result, kept on a worker: local labels of its core and its seam strips."""

    core: np.ndarray
    seams: dict[str, np.ndarray]


def _segment_block(region: np.ndarray, segmenter, plan: _BlockPlan, low: float, high: float) -> _BlockLabels:
    data = np.asarray(region)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError("image contains NaN or infinite values")
    normalized = map_to_unit(data, low, high)  # with the whole image's percentiles
    labels = segmenter(normalized, plan)
    seams = {}
    for side, (rows, cols) in plan.seams.items():
        strip = labels[rows, cols]
        # Store strips with the axis that crosses the edge first, so both edge orientations compare alike.
        seams[side] = np.ascontiguousarray(strip if side in ("top", "bottom") else strip.T)
    return _BlockLabels(core=np.ascontiguousarray(labels[plan.core]), seams=seams)


def _block_summary(result: _BlockLabels) -> tuple[np.ndarray, np.ndarray]:
    """Local labels present in the core and their pixel counts there."""
    counts = np.bincount(result.core.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    return ids, counts[ids]


def _seam_strip(result: _BlockLabels, side: str) -> np.ndarray:
    return result.seams[side]


def _relabel(result: _BlockLabels, lookup: np.ndarray) -> np.ndarray:
    return lookup[result.core]


# --------------------------------------------------------------------------- planning and merging


def _axis_tiles(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one axis of the whole image's grid (as predict_image plans it)."""
    from segtool.pipeline.tiling import plan_tiles

    return [t[0].start for t in plan_tiles((max(length, tile),), (tile,), overlap)]


def _plan_blocks(shape: tuple[int, int], block: int, halo: int, tile: tuple[int, int], overlap: float):
    """Plan every block (a grid of :class:`_BlockPlan`) and list the edges between neighbours.

    An edge is ``(first, second, first_side, second_side, (near_first,
    near_second))``: block indices (row-major), which seam strips to compare,
    and the strip rows in each block's own core next to the edge.
    """
    height, width = shape
    depth = min(max(1, halo // 2), block)  # strip rows on each side of an edge
    axis_tiles = [_axis_tiles(n, t, overlap) for n, t in zip(shape, tile)]

    def axis_plan(axis: int, start: int):
        n, t = shape[axis], tile[axis]
        stop = min(n, start + block)
        w0, w1 = max(0, start - halo), min(n, stop + halo)
        starts = [s for s in axis_tiles[axis] if s < w1 and s + t > w0]
        r0, r1 = starts[0], starts[-1] + t
        return {
            "core": slice(start - w0, stop - w0),
            "region": slice(r0, min(r1, n)),
            "pad": (0, r1 - min(r1, n)),  # only when the image is shorter than a tile
            "tiles": tuple(s - r0 for s in starts),
            "window": slice(w0 - r0, w1 - r0),
            "seams": seam_ranges(n, start, stop, w0),
        }

    def seam_ranges(n: int, start: int, stop: int, w0: int) -> dict[str, slice]:
        ranges = {}
        if start > 0:  # this block comes second across its leading edge
            lo, hi = (start, start + 1) if halo == 0 else (start - depth, min(n, start + depth))
            ranges["lead"] = slice(lo - w0, hi - w0)
        if stop < n:  # and first across its trailing edge
            lo, hi = (stop - 1, stop) if halo == 0 else (stop - depth, min(n, stop + depth))
            ranges["trail"] = slice(lo - w0, hi - w0)
        return ranges

    plans = []
    for y0 in range(0, height, block):
        ya = axis_plan(0, y0)
        row = []
        for x0 in range(0, width, block):
            xa = axis_plan(1, x0)
            seams = {}
            for side, key in (("top", "lead"), ("bottom", "trail")):
                if key in ya["seams"]:
                    seams[side] = (ya["seams"][key], xa["core"])
            for side, key in (("left", "lead"), ("right", "trail")):
                if key in xa["seams"]:
                    seams[side] = (ya["core"], xa["seams"][key])
            row.append(
                _BlockPlan(
                    region=(ya["region"], xa["region"]),
                    pad=(ya["pad"], xa["pad"]),
                    tiles=(ya["tiles"], xa["tiles"]),
                    window=(ya["window"], xa["window"]),
                    core=(ya["core"], xa["core"]),
                    seams=seams,
                )
            )
        plans.append(row)

    if halo == 0:
        near = (slice(None), slice(None))
    else:
        reach = min(SEAM_REACH, depth)
        near = (slice(depth - reach, depth), slice(depth, depth + reach))
    n_rows, n_cols = len(plans), len(plans[0])
    edges = []
    for i in range(n_rows):
        for j in range(n_cols):
            if i + 1 < n_rows:
                edges.append((i * n_cols + j, (i + 1) * n_cols + j, "bottom", "top", near))
            if j + 1 < n_cols:
                edges.append((i * n_cols + j, i * n_cols + j + 1, "right", "left", near))
    return plans, edges


def _merge_tables(summaries, pairs, edges, min_size: int) -> tuple[list[np.ndarray], int, int]:
    """Union-find over the seam pairs: one lookup table (local -> final label) per block.

    Returns the lookup tables, the number of objects, and how many of them
    were assembled from more than one block.
    """
    # Every (block, local label) present in a core is a node; node order is block order, then label.
    sizes = np.array([ids.size for ids, _ in summaries], np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)])
    n_nodes = int(base[-1])
    if n_nodes == 0:
        return [np.zeros(1, np.uint32) for _ in summaries], 0, 0
    areas = np.concatenate([a for _, a in summaries]).astype(np.int64)
    u_parts, v_parts = [], []
    for (first, second, *_), (pa, pb) in zip(edges, pairs):
        ids_a, ids_b = summaries[first][0], summaries[second][0]
        u_parts.append(base[first] + np.searchsorted(ids_a, pa))
        v_parts.append(base[second] + np.searchsorted(ids_b, pb))
    u = np.concatenate(u_parts) if u_parts else np.zeros(0, np.int64)
    v = np.concatenate(v_parts) if v_parts else np.zeros(0, np.int64)
    # Number kept objects in order of their first piece, so the result does not depend on scipy's numbering.
    component, object_area, first_node = join_pieces(n_nodes, u, v, areas, np.arange(n_nodes))
    final = number_objects(object_area, first_node, min_size)
    kept = final > 0
    pieces = np.bincount(component, minlength=final.size)
    lookups = []
    for k, (ids, _) in enumerate(summaries):
        lookup = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.uint32)
        lookup[ids] = final[component[base[k] : base[k + 1]]]
        lookups.append(lookup)
    return lookups, int(np.count_nonzero(kept)), int(np.count_nonzero(kept & (pieces > 1)))


def _predict_with(
    image,
    segmenter,
    *,
    block: int,
    halo: int,
    tile: tuple[int, int],
    overlap: float,
    norm: tuple[float, float],
    min_size: int,
) -> BlockPrediction:
    """Normalise, segment ``image`` block by block with ``segmenter``, merge (the engine of :func:`predict_blocks`).

    ``segmenter(normalised_region, plan)`` returns the labels (0 background)
    of ``plan.window``; it must be picklable to run on a distributed cluster.
    ``tile`` and ``overlap`` lay out the tile grid that decides each block's
    region; tests pass ``tile=(1, 1)`` (region = window) and simple
    segmenters to check the merge exactly. ``norm`` holds the percentiles
    mapped to 0 and 1.
    """
    import dask
    import dask.array as da

    start_time = time.perf_counter()
    low, high = dask_percentiles(image, norm)
    plans, edges = _plan_blocks(tuple(int(n) for n in image.shape), block, halo, tile, overlap)
    flat = [plan for row in plans for plan in row]
    tasks = [
        dask.delayed(_segment_block)(image[plan.region], segmenter, plan, low, high)
        for plan in flat
    ]
    # Keep the block results on the workers: the tables below and the final relabelling both read them.
    results = dask.persist(*tasks)
    summaries = dask.compute(*[dask.delayed(_block_summary)(r) for r in results])
    predicted = time.perf_counter()

    # Strips are cut where their block lives; only strips and label pairs travel.
    pair_tasks = []
    for first, second, side_first, side_second, (near_first, near_second) in edges:
        strip_a = dask.delayed(_seam_strip)(results[first], side_first)
        strip_b = dask.delayed(_seam_strip)(results[second], side_second)
        pair_tasks.append(dask.delayed(overlap_pairs)(strip_a, strip_b, near_first, near_second))
    pairs = dask.compute(*pair_tasks)
    lookups, n_objects, joined = _merge_tables(summaries, pairs, edges, min_size)
    merged = time.perf_counter()

    n_cols = len(plans[0])
    labels = da.block(
        [
            [
                da.from_delayed(
                    dask.delayed(_relabel)(results[i * n_cols + j], lookups[i * n_cols + j]),
                    shape=tuple(s.stop - s.start for s in plan.core),
                    dtype=np.uint32,
                )
                for j, plan in enumerate(row)
            ]
            for i, row in enumerate(plans)
        ]
    )
    return BlockPrediction(
        labels=labels,
        n_objects=n_objects,
        blocks=len(flat),
        joined=joined,
        percentiles=(float(low), float(high)),
        block=block,
        halo=halo,
        seconds_predict=predicted - start_time,
        seconds_merge=merged - predicted,
        seconds=time.perf_counter() - start_time,
    )


# --------------------------------------------------------------------------- public entry point


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def predict_blocks(
    image,
    model_path: Path,
    *,
    block: int = 2048,
    halo: int = 128,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "fp32",
    transformed: bool = False,
) -> BlockPrediction:
    """Segment a large 2-D image with a U-Net, block by block on a Dask cluster.

    Runs on the current Dask scheduler (a ``distributed.Client`` if one is
    active). The network runs once per block; block results stay on the
    workers until ``labels`` is computed or written.

    Parameters
    ----------
    image : (H, W) dask.array.Array
        Grayscale image of any real dtype, e.g. from ``dask.array.from_zarr``;
        a NumPy array is wrapped. Its chunking does not matter. Not modified.
    model_path : Path
        Model file from ``segtool train``, readable at this path on every
        worker.
    block : int, optional
        Block (and output chunk) size in pixels; at least the tile size.
    halo : int, optional
        Context pixels read around each block; make it larger than the
        largest object (see the module docstring for what happens otherwise).
    tiling : TileOptions, optional
        As in :func:`segtool.infer.predict.predict_image`, except that blocks
        always blend overlapping tiles: ``overlap`` defaults to 0.25 and
        ``batch_size`` to 4; ``tile_halo`` and ``scale`` are not used.
    objects : ObjectOptions, optional
        As in :func:`segtool.infer.predict.predict_image`; ``min_size`` also
        applies to objects assembled across blocks.
    device : str, optional
        Where the network runs on each worker (``"cpu"``, ``"cuda"``, ...).
    threads : int, optional
        PyTorch threads per worker process (default: PyTorch's choice, all
        cores; with several worker processes per machine, set it).
    precision : {"fp32", "bf16", "auto"}, optional
        Arithmetic of the network on each worker
        (:func:`segtool.model.precision.resolve_precision`).
    transformed : bool, optional
        ``image`` already went through the model's input transform
        (``open_blocks(path, input_transform=...)`` applies it as blocks are
        read). Without it, a model whose transform is not ``intensity`` is
        refused.

    Returns
    -------
    BlockPrediction
        ``labels`` as a lazy uint32 Dask array with ``block``-sized chunks,
        plus counts and timings.

    Raises
    ------
    InputError
        If the image is not 2-D or empty, ``block`` is smaller than the tile,
        ``halo`` is negative, or another option is out of range.
    ModelError
        If the model file is unusable or expects more than one channel.

    Examples
    --------
    >>> import dask, dask.array as da
    >>> from segtool.infer.predict import find_packaged_model
    >>> image = da.zeros((300, 200), dtype=np.uint8, chunks=100)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     result = predict_blocks(image, find_packaged_model(), block=128, halo=16)
    >>> result.blocks, result.n_objects, result.labels.chunks
    (6, 0, ((128, 128, 44), (128, 72)))
    """
    import dask.array as da

    from segtool.model.config import UNetConfig
    from segtool.infer.instances import DEFAULT_MIN_SIZE, maps_to_labels
    from segtool.model.modelinfo import read_model_info
    from segtool.pipeline.options import check_common, resolve_tile

    if not isinstance(image, da.Array):
        image = da.asarray(image)
    if image.ndim != 2 or 0 in image.shape:
        raise InputError(f"image must be 2-D (Y, X) and not empty, got shape {tuple(image.shape)}")
    if np.dtype(image.dtype).kind not in "uifb":
        raise InputError(f"unsupported pixel type {image.dtype}")
    block = _check_int(block, "block", 1)
    halo = _check_int(halo, "halo", 0)

    model_path = Path(model_path)
    config = UNetConfig.from_dict(read_model_info(model_path)["config"])
    if config.in_channels != 1:
        raise ModelError(f"model expects {config.in_channels} input channels, the image has 1")
    if config.input != "intensity" and not transformed:  # blocks normalise the values they are given
        raise ModelError(f"{model_path.name}: Dask prediction needs the image after the input transform {config.input!r}: "
                         "open it with open_blocks(path, input_transform=...)")
    overlap = 0.25 if tiling.overlap is None else tiling.overlap
    batch_size = 4 if tiling.batch_size is None else tiling.batch_size
    check_common(None, overlap, batch_size, 1.0)
    # The whole image's tile grid, as predict_image would lay it out; every block runs its share of it.
    tile_hw = resolve_tile(config, image.shape, tiling.tile)
    if block < max(tile_hw):
        raise InputError(f"block ({block}) must be at least the tile size ({max(tile_hw)})")
    options = objects.resolve(config)
    # Check the post-processing values here, once, rather than in every block task on the workers.
    maps_to_labels(np.zeros((config.out_channels, 1, 1), np.float32), target=config.target, **options)

    segmenter = _UNetSegmenter(
        model_path=str(model_path.resolve()),
        device=str(device),
        threads=None if threads is None else _check_int(threads, "threads", 1),
        tile=tile_hw,
        batch_size=int(batch_size),
        tta=bool(tiling.tta),
        options=options,
        precision=str(precision),
    )
    return _predict_with(
        image,
        segmenter,
        block=block,
        halo=halo,
        tile=tile_hw,
        overlap=float(overlap),
        norm=(config.norm_low, config.norm_high),
        min_size=int(options.get("min_size", DEFAULT_MIN_SIZE)),
    )
