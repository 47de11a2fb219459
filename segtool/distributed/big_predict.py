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
   in-memory path's pieces (:mod:`segtool.distributed.block_plan`): the
   tiles of the *whole image's* tile grid at the image's scale (halo tiles
   keeping their cores by default, blended tiles with ``overlap``) that give
   the window's maps, from the image resized around them as the whole
   resize would, and the maps resized back; so the window's network maps
   are the in-memory run's (within 1e-3, for any block size). Then
   :func:`segtool.infer.instances.maps_to_labels` on the window. With
   ``scale=None`` the scale comes from one size estimate on a sample of the
   image, made on the client before the blocks
   (:func:`segtool.infer.predict.estimate_from_sample`). It keeps the labels of its *core* (the block) and four thin *seam
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

Why matching rather than the ownership rule of :mod:`segtool.infer.bands`
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
from segtool.distributed.block_plan import BlockPlan, TileGrid, block_maps, plan_blocks, tile_grid
from segtool.pipeline.options import SEAM_HALO, ObjectOptions, TileOptions
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
    scale : float
        The resize factor the network saw the image at.
    size : SizeEstimate or None
        The estimated object size (``tiling.scale=None``), from a sample of the image.
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
    scale: float = 1.0
    size: Any = None


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
class _UNetSegmenter:
    """Picklable ``(normalised region, plan) -> window labels``: a model path and options, no torch objects."""

    model_path: str
    device: str
    threads: int | None
    grid: TileGrid
    tta: bool
    options: dict[str, Any] = field(hash=False)
    precision: str = "fp32"

    def __call__(self, normalized: np.ndarray, plan: BlockPlan) -> np.ndarray:
        from segtool.infer.instances import maps_to_labels
        from segtool.infer.network import make_predictor

        model = _load_model(self.model_path, self.device, self.threads, self.precision)
        config = model.config
        predictor = make_predictor(model.net, config.target, tta=self.tta)
        maps = block_maps(normalized, plan, self.grid, predictor, out_channels=config.out_channels)
        return maps_to_labels(maps, target=config.target, **self.options)


@dataclass
class _BlockLabels:
    """One block's result, kept on a worker: local labels of its core and its seam strips."""

    core: np.ndarray
    seams: dict[str, np.ndarray]


def _segment_block(region: np.ndarray, segmenter, plan: BlockPlan, low: float, high: float) -> _BlockLabels:
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
    grid: TileGrid | None = None,
    norm: tuple[float, float],
    min_size: int,
    percentiles: tuple[float, float] | None = None,
    start_time: float | None = None,
) -> BlockPrediction:
    """Normalise, segment ``image`` block by block with ``segmenter``, merge (the engine of :func:`predict_blocks`).

    ``segmenter(normalised_region, plan)`` returns the labels (0 background)
    of ``plan.window``; it must be picklable to run on a distributed cluster.
    ``grid``, the whole image's tile grid, decides each block's region;
    tests pass none (region = window) and simple segmenters to check the
    merge exactly. ``norm`` holds the percentiles mapped to 0 and 1
    (``percentiles``: their values, when already known).
    """
    import dask
    import dask.array as da

    start_time = time.perf_counter() if start_time is None else start_time
    low, high = dask_percentiles(image, norm) if percentiles is None else percentiles
    plans, edges = plan_blocks(tuple(int(n) for n in image.shape), block, halo, grid, seam_reach=SEAM_REACH)
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
    halo: int = SEAM_HALO,
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
        As in :func:`segtool.infer.predict.predict_image`: the whole image's
        tile grid at ``scale`` (halo tiles, or blended tiles with
        ``overlap``), each block running its share of it, so the maps are
        the in-memory run's (within 1e-3) for any block size. ``scale=None``
        estimates the objects' size once, on a sample of the image
        (:func:`segtool.infer.predict.estimate_from_sample`).
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
        If the image is not 2-D or empty, ``block`` is not positive,
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
    from segtool.infer.instances import DEFAULT_MIN_SIZE
    from segtool.infer.predict import estimate_from_sample, scaled_objects

    image = _check_image(image)
    block = _check_int(block, "block", 1)
    halo = _check_int(halo, "halo", 0)
    threads = None if threads is None else _check_int(threads, "threads", 1)
    tiling.check()

    model_path = Path(model_path)
    config = _block_config(model_path, objects, transformed=transformed)
    device_type, precision_used = _network_kind(device, precision)
    shape = tuple(int(n) for n in image.shape)
    tiling.plan(config, shape, device_type=device_type, precision=precision_used)  # tile options, before any work

    start_time = time.perf_counter()
    low, high = dask_percentiles(image, (config.norm_low, config.norm_high))
    size = None
    scale = tiling.scale
    if scale is None:  # estimated once, on the client, from a sample of the image
        model = _load_model(str(model_path.resolve()), str(device), threads, str(precision))
        size = estimate_from_sample(lambda rows, cols, step: np.asarray(image[rows, cols][::step, ::step].compute()),
                                    shape, model, percentiles=(low, high), objects=objects)
        scale = 1.0 if size is None else size.scale
    grid = tile_grid(config, shape, tiling, scale=float(scale), device_type=device_type, precision=precision_used)
    options = scaled_objects(objects, config, float(scale))

    segmenter = _UNetSegmenter(
        model_path=str(model_path.resolve()),
        device=str(device),
        threads=threads,
        grid=grid,
        tta=bool(tiling.tta),
        options=options,
        precision=str(precision),
    )
    result = _predict_with(
        image,
        segmenter,
        block=block,
        halo=halo,
        grid=grid,
        norm=(config.norm_low, config.norm_high),
        min_size=int(options.get("min_size", DEFAULT_MIN_SIZE)),
        percentiles=(low, high),
        start_time=start_time,
    )
    result.scale, result.size = float(scale), size
    return result


def _check_image(image: Any) -> Any:
    """``image`` as a Dask array, refused unless 2-D, not empty and of real (or bool) pixels."""
    import dask.array as da

    if not isinstance(image, da.Array):
        image = da.asarray(image)
    if image.ndim != 2 or 0 in image.shape:
        raise InputError(f"image must be 2-D (Y, X) and not empty, got shape {tuple(image.shape)}")
    if np.dtype(image.dtype).kind not in "uifb":
        raise InputError(f"unsupported pixel type {image.dtype}")
    return image


def _block_config(model_path: Path, objects: ObjectOptions, *, transformed: bool):
    """The model's config (read without torch), refused where blocks cannot use it; ``objects`` checked.

    The post-processing values are checked here, once, rather than in every
    block task on the workers.
    """
    from segtool.infer.instances import maps_to_labels
    from segtool.model.config import UNetConfig
    from segtool.model.modelinfo import read_model_info

    config = UNetConfig.from_dict(read_model_info(model_path)["config"])
    if config.in_channels != 1:
        raise ModelError(f"model expects {config.in_channels} input channels, the image has 1")
    if config.input != "intensity" and not transformed:  # blocks normalise the values they are given
        raise ModelError(f"{model_path.name}: Dask prediction needs the image after the input transform {config.input!r}: "
                         "open it with open_blocks(path, input_transform=...)")
    maps_to_labels(np.zeros((config.out_channels, 1, 1), np.float32), target=config.target, **objects.resolve(config))
    return config


def _network_kind(device: str, precision: str) -> tuple[str, str]:
    """Device type and resolved precision of the workers' network (they size the default halo tile)."""
    from segtool.model.model import resolve_device
    from segtool.model.precision import resolve_precision

    where = resolve_device(str(device))  # the client's answer to "auto": the workers are assumed alike
    return where.type, resolve_precision(str(precision), where)
