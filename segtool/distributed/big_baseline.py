"""The classical baseline on a Dask array, block by block, with in-memory results.

:func:`segment_baseline_blocks` gives the labels of
:func:`segtool.baseline.segment_baseline` for an image too big for memory.
Nothing is approximated per block:

- The background fit and the automatic threshold already work on regular
  subsamples of the image (at most ~2**16 and ~2**18 pixels). Those grids are
  gathered to the client and handed to the same solver and threshold method.
- The corrected image is evaluated per block at the block's global pixel
  positions by the arithmetic the in-memory path uses, which rounds every
  pixel the same way whatever the block (see
  :func:`segtool.background._outer_sum`), so the foreground mask is the same
  bit for bit. The Gaussian ``smooth`` runs on blocks with a halo of its
  kernel radius.
- Each block is labelled on its own; the client joins the pieces that touch
  across block borders (from the blocks' edges only) into the image's
  connected components, measures them from per-block sizes and renumbers them
  in raster order of their first pixel, the order ``scipy.ndimage.label``
  gives them in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from segtool.background import POLARITIES, BackgroundFit, check_degree, check_layout, fit_steps, fitting_grid
from segtool.baseline import (
    MIN_SIZE,
    OBJECT_STRUCTURE,
    THRESHOLD_PIXELS,
    apply_method,
    fit_polarity,
    grid_threshold,
    is_flat,
    threshold_grid,
    segment_baseline,
)
from segtool.checks import check_choice, check_count, check_sigma, check_threshold
from segtool.errors import InputError
from segtool.legendre import evaluate_at
from segtool.pipeline.seams import join_pieces, number_objects, touching_pairs

__all__ = ["BlockBaselineResult", "segment_baseline_blocks"]

# scipy.ndimage.gaussian_filter's default kernel half-width, in sigmas.
_TRUNCATE = 4.0
# Background regions (and so holes) are 4-connected, as in segtool.baseline.
_GAP_STRUCTURE = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True, eq=False)
class BlockBaselineResult:
    """Output of :func:`segment_baseline_blocks`.

    Attributes
    ----------
    labels : (H, W) dask array of uint32
        Objects ``1..n_objects`` (consecutive), 0 = background; chunked like
        the input. Lazy: computing or storing it runs the labelling again.
    n_objects : int
        Number of objects.
    threshold : float or None
        Threshold used, in corrected-image units (see :class:`BaselineResult`);
        None when the image was constant or flat.
    polarity : str
        ``"bright"`` or ``"dark"`` (``"auto"`` resolved).
    fit : BackgroundFit
        The background fit.
    background : (H, W) dask array of float32
        Fitted background (lazy).
    corrected : (H, W) dask array of float32
        Image minus background, not smoothed (lazy).
    empty_reason : str or None
        Why the image holds no object by rule (see :class:`BaselineResult`).
    """

    labels: Any
    n_objects: int
    threshold: float | None
    polarity: str
    fit: BackgroundFit
    background: Any
    corrected: Any
    empty_reason: str | None = None


def segment_baseline_blocks(
    image: Any,
    *,
    degree: int = 2,
    robust: bool = True,
    polarity: str = "bright",
    threshold: str | float = "otsu",
    min_size: int = MIN_SIZE,
    smooth: float = 0.0,
    fill_holes: bool = False,
    split: bool = False,
) -> BlockBaselineResult:
    """Segment a big image block by block, as :func:`segment_baseline` does in memory.

    Parameters
    ----------
    image : (H, W) dask array
        Grayscale image of any real dtype, in blocks of any shape (an
        array_like is wrapped in Dask's automatic blocks).
    degree, robust, polarity, threshold, min_size, smooth, fill_holes
        As for :func:`segtool.baseline.segment_baseline`.
    split : bool, optional
        Not available here (InputError if True).

    Returns
    -------
    result : BlockBaselineResult
        Lazy labels, background and corrected image; the object count,
        threshold, polarity and fit.

    Raises
    ------
    InputError
        As :func:`segment_baseline`; also for ``split``, for blocks of unknown
        size, and in big-image mode for an automatic threshold whose regular
        subsample holds only background while the whole image does not (only
        possible for noise-free images; give a number instead).

    Notes
    -----
    The labels equal those of ``segment_baseline(image.compute(), ...)``, pixel
    for pixel and with the same numbering (checked in
    ``tests/test_distributed_baseline.py``); only the dtype differs (always
    uint32 here; the writers narrow it).

    Images of at most 2**18 pixels are segmented in memory by
    :func:`segment_baseline` (there the automatic threshold looks at every
    pixel) and wrapped in Dask arrays.

    Small reductions run eagerly on the active Dask scheduler (the
    ``distributed`` client, if one is the default): a pass over the image for
    its minimum, maximum and the fitting and threshold grids; with ``smooth``
    and an automatic threshold, one for the threshold grid of the smoothed
    image; one labelling for the object sizes (with ``fill_holes`` also the
    background regions, and one more pass for the objects around the holes).
    Computing ``labels`` then reads the image once more. The client holds
    only small things: the grids, one row and column of labels along every
    block border, and a size and first pixel per connected piece of a block.

    ``split`` is refused: its h-maxima and watershed of the distance transform
    are not local operations, so blocks cannot reproduce them exactly.

    A constant image, or one that is only smooth background, gives 0 objects
    as in memory. The noise-contrast part of the empty-image rule is applied
    only to images segmented in memory (up to 2**18 pixels here).

    Examples
    --------
    >>> import dask.array as da
    >>> image = np.zeros((600, 500), dtype=np.uint8)
    >>> image[100:120, 240:260] = 200  # across a block border
    >>> result = segment_baseline_blocks(da.from_array(image, chunks=128), degree=0)
    >>> result.n_objects, result.labels.dtype.name, int(result.labels.max())
    (1, 'uint32', 1)
    """
    degree = check_degree(degree)
    polarity = check_choice(polarity, POLARITIES, "polarity")
    method = check_threshold(threshold)
    min_size = check_count(min_size, "min_size")
    smooth = check_sigma(smooth)
    if split:
        raise InputError(
            "--split is not available in big-image mode (its watershed needs the whole image); "
            "run without --split, or on an image that fits in memory"
        )
    data = _check_blocks(image)
    options = {"degree": degree, "robust": robust, "polarity": polarity, "threshold": method, "min_size": min_size}
    if data.size <= THRESHOLD_PIXELS:
        return _in_memory(data, smooth=smooth, fill_holes=fill_holes, **options)
    shape = data.shape
    raw, lo, hi, fit, polarity = _survey(data, degree, robust=robust, polarity=polarity)
    meta = np.empty((0, 0), dtype=np.float32)
    background = data.map_blocks(_background_block, coef=fit.coefficients, shape=shape, meta=meta)
    corrected = data.map_blocks(_corrected_block, coef=fit.coefficients, shape=shape, meta=meta)

    def empty(reason: str) -> BlockBaselineResult:
        import dask.array as da

        labels = da.zeros(shape, dtype=np.uint32, chunks=data.chunks)
        return BlockBaselineResult(labels, 0, None, polarity, fit, background, corrected, empty_reason=reason)

    if lo == hi:
        return empty("image is constant")
    values = corrected if smooth == 0 else _smoothed(corrected, smooth)
    level = _block_threshold(values, method, raw=raw, fit=fit, polarity=polarity, smoothed=smooth != 0,
                             scale=max(abs(lo), abs(hi)))
    if level is None:
        return empty("image is only smooth background")
    foreground = values.map_blocks(
        _foreground_block, level=float(level), bright=polarity == "bright", meta=np.empty((0, 0), dtype=bool)
    )
    labels, n_objects = _label(foreground, min_size=min_size, fill_holes=bool(fill_holes))
    if labels.chunks != data.chunks:  # the smoothing halo may have merged small blocks
        labels = labels.rechunk(data.chunks)
    return BlockBaselineResult(
        labels=labels,
        n_objects=n_objects,
        threshold=float(level),
        polarity=polarity,
        fit=fit,
        background=background,
        corrected=corrected,
    )


# ----------------------------------------------------------------- preparation


def _survey(data: Any, degree: int, *, robust: bool, polarity: str) -> tuple[np.ndarray, float, float, BackgroundFit, str]:
    """One pass over the image for everything small, and the fit.

    Returns the threshold grid of the raw image, the image's minimum and
    maximum (checked finite; they also tell a constant image), the
    background fit and the polarity (``"auto"`` resolved).
    """
    import dask

    grid, raw, lo, hi = dask.compute(
        fitting_grid(data, fit_steps(*data.shape)), threshold_grid(data), data.min(), data.max()
    )
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("image contains NaN or infinite values")
    fit, polarity = fit_polarity(grid, data.shape, degree, robust=bool(robust), polarity=polarity)
    return raw, lo, hi, fit, polarity


def _block_threshold(values: Any, method: str | float, *, raw: np.ndarray, fit: BackgroundFit, polarity: str,
                     smoothed: bool, scale: float) -> float | None:
    """The threshold in corrected-image units; None when the image is only smooth background.

    ``values`` is the corrected (and maybe smoothed) image whose foreground
    the threshold selects; ``scale`` the image's largest absolute value.
    """
    if not isinstance(method, str):
        return method
    if not smoothed:
        # The threshold grid of the image, corrected on the client, holds the
        # values the corrected image has there (as in segment_baseline).
        level = grid_threshold(raw, fit, method, polarity)
        if level is None:
            _refuse_whole_image_threshold(values, method, scale)
        return level
    sample = np.asarray(threshold_grid(values).compute())
    if is_flat(sample, scale):
        _refuse_whole_image_threshold(values, method, scale)
        return None
    return apply_method(sample, method, polarity)


def _check_blocks(image: Any) -> Any:
    """2-D real dask array of known block sizes; float16 widened to float32."""
    try:
        import dask.array as da
    except ImportError:
        raise InputError("big-image mode needs Dask: pip install 'segtool[distributed]'") from None
    data = image if isinstance(image, da.Array) else da.asarray(image)
    if data.ndim == 2 and any(np.isnan(n) for n in data.shape):
        raise InputError("image has blocks of unknown size; call compute_chunk_sizes() on it first")
    check_layout(data)
    return data.astype(np.float32) if data.dtype == np.float16 else data


def _in_memory(data: Any, *, fill_holes: bool, **options: Any) -> BlockBaselineResult:
    """segment_baseline on the computed image, wrapped like the block result."""
    import dask.array as da

    result = segment_baseline(data.compute(), fill_holes=fill_holes, **options)
    labels = result.labels.astype(np.uint32)
    return BlockBaselineResult(
        labels=da.from_array(labels, chunks=data.chunks),
        n_objects=int(labels.max()),
        threshold=result.threshold,
        polarity=result.polarity,
        fit=result.fit,
        background=da.from_array(result.background, chunks=data.chunks),
        corrected=da.from_array(result.corrected, chunks=data.chunks),
        empty_reason=result.empty_reason,
    )


# ----------------------------------------------------------------- per block


def _background_block(block: np.ndarray, *, coef: np.ndarray, shape: tuple[int, int], block_info=None) -> np.ndarray:
    """Background at the block's global pixel positions (float32)."""
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    out = np.empty(block.shape, dtype=np.float32)
    evaluate_at(coef, shape, np.arange(r0, r1), np.arange(c0, c1), out)
    return out


def _corrected_block(block: np.ndarray, *, coef: np.ndarray, shape: tuple[int, int], block_info=None) -> np.ndarray:
    """Block minus background, with the float32 arithmetic of correct_rows."""
    out = _background_block(block, coef=coef, shape=shape, block_info=block_info)
    np.subtract(block, out, out=out, dtype=np.float32, casting="unsafe")
    return out


def _smoothed(corrected: Any, sigma: float) -> Any:
    """``gaussian_filter(corrected, sigma, mode="nearest")`` on blocks with a halo of the kernel radius.

    Each output pixel depends only on the pixels within the radius, so the
    halo makes every block exact; at the image's edges there is no halo and
    scipy's own ``nearest`` mode applies, as on the whole image.
    """
    radius = int(_TRUNCATE * sigma + 0.5)
    return corrected.map_overlap(
        ndi.gaussian_filter,
        depth=max(radius, 1),
        boundary="none",
        sigma=sigma,
        mode="nearest",
        truncate=_TRUNCATE,
        meta=np.empty((0, 0), dtype=np.float32),
    )


def _foreground_block(values: np.ndarray, *, level: float, bright: bool) -> np.ndarray:
    # ``level`` stays a Python float, so it is compared in float32 as in memory.
    return np.greater(values, level) if bright else np.less(values, level)


def _refuse_whole_image_threshold(values: Any, method: str, scale: float) -> None:
    """The threshold subsample is flat: return when the whole image is too (0 objects), else raise.

    Big-image mode thresholds a subsample; when it misses every object of a
    noise-free image, it cannot pick a level, and asks for a number.
    """
    import dask

    lo, hi = dask.compute(values.min(), values.max())
    if is_flat(np.array([lo, hi]), scale):
        return
    raise InputError(
        f"threshold {method!r} found only background in its regular subsample of the image; "
        "big-image mode does not threshold all pixels at once, so give the threshold as a number"
    )


# ---------------------------------------------------------------------- labels
#
# dask_image.ndmeasure.label builds a graph that grows faster than the number of
# blocks (measured: 4,634 tasks for 4 x 4 blocks, 885,902 for 16 x 16, and 1.8 s
# against 387 s to label a 1024 x 1024 mask), so the merge is done here: every
# block is labelled on its own, in parallel, and the client joins the pieces
# that touch across block borders, from the blocks' edge rows and columns and
# each piece's size and first pixel. The pixels stay on the workers.


class _Pieces(NamedTuple):
    """Connected pieces of one block (see :func:`_pieces`)."""

    count: int  # pieces 1..count
    sizes: np.ndarray  # (count + 1,) pixels per piece
    first: np.ndarray  # (count + 1,) raster index in the image of each piece's first pixel
    top: np.ndarray  # piece ids along the block's first row, ...
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray
    border: np.ndarray  # ids of the pieces on the image's border


class _Components(NamedTuple):
    """All blocks' pieces joined into the connected components of the image (see :func:`_join`)."""

    offsets: np.ndarray  # (blocks_y, blocks_x): a piece's global id is its block's offset + its id
    component: np.ndarray  # (pieces + 1,) component of each global id; 0 (background) only for id 0
    sizes: np.ndarray  # pixels per component
    first: np.ndarray  # raster index of each component's first pixel
    border: np.ndarray  # bool per component: touches the image border


def _label(foreground: Any, *, min_size: int, fill_holes: bool) -> tuple[Any, int]:
    """uint32 labels of the 8-connected objects (holes filled if asked), small ones removed, and their count."""
    import dask

    starts = [np.cumsum((0,) + c[:-1]) for c in foreground.chunks]
    blocks = foreground.to_delayed()
    tasks = [
        [
            dask.delayed(_block_pieces)(
                blocks[i, j], origin=(int(y), int(x)), shape=foreground.shape, holes=fill_holes
            )
            for j, x in enumerate(starts[1])
        ]
        for i, y in enumerate(starts[0])
    ]
    (pieces,) = dask.compute(tasks)
    objects = _join([[p[0] for p in row] for row in pieces], OBJECT_STRUCTURE)
    sizes = objects.sizes.copy()
    if fill_holes:
        gaps = _join([[p[1] for p in row] for row in pieces], _GAP_STRUCTURE)
        holes, owners = _hole_owners(foreground, objects, gaps)
        # A filled hole counts towards its owner's size (in memory it is part of
        # the object when min_size is applied), not towards its numbering.
        np.add.at(sizes, owners, gaps.sizes[holes])
    lut = number_objects(sizes, objects.first, min_size)
    labels = _relabel(foreground, objects, lut, structure=OBJECT_STRUCTURE)
    if fill_holes:
        hole_lut = np.zeros(len(gaps.sizes), dtype=np.uint32)
        hole_lut[holes] = lut[owners]
        # Object and hole pixels are disjoint; each relabelling is 0 elsewhere.
        labels = labels + _relabel(foreground, gaps, hole_lut, structure=_GAP_STRUCTURE, invert=True)
    return labels, int(lut.max())


def _block_pieces(
    foreground: np.ndarray, *, origin: tuple[int, int], shape: tuple[int, int], holes: bool
) -> tuple[_Pieces, _Pieces | None]:
    """The block's object pieces and, if ``holes``, its background pieces."""
    objects = _pieces(foreground, OBJECT_STRUCTURE, origin=origin, shape=shape)
    return objects, _pieces(~foreground, _GAP_STRUCTURE, origin=origin, shape=shape) if holes else None


def _pieces(mask: np.ndarray, structure: np.ndarray, *, origin: tuple[int, int], shape: tuple[int, int]) -> _Pieces:
    ids, count = ndi.label(mask, structure=structure)
    flat = ids.ravel()
    where = np.flatnonzero(flat)
    found, index = np.unique(flat[where], return_index=True)
    rows, cols = np.divmod(where[index], ids.shape[1])
    first = np.full(count + 1, np.iinfo(np.int64).max, dtype=np.int64)
    # Raster order within a block is raster order in the image.
    first[found] = (rows + origin[0]) * shape[1] + cols + origin[1]
    edges = [np.empty(0, dtype=ids.dtype)]
    if origin[0] == 0:
        edges.append(ids[0])
    if origin[0] + ids.shape[0] == shape[0]:
        edges.append(ids[-1])
    if origin[1] == 0:
        edges.append(ids[:, 0])
    if origin[1] + ids.shape[1] == shape[1]:
        edges.append(ids[:, -1])
    border = np.unique(np.concatenate(edges))
    return _Pieces(
        count=int(count),
        sizes=np.bincount(flat, minlength=count + 1).astype(np.int64),
        first=first,
        top=ids[0].copy(),
        bottom=ids[-1].copy(),
        left=ids[:, 0].copy(),
        right=ids[:, -1].copy(),
        border=border[border > 0],
    )


def _join(grid: list[list[_Pieces]], structure: np.ndarray) -> _Components:
    """Connected components of the image from its blocks' pieces (``grid[i][j]`` for block (i, j))."""
    counts = np.array([[p.count for p in row] for row in grid], dtype=np.int64)
    offsets = (np.cumsum(counts) - counts.ravel()).reshape(counts.shape)
    n = int(counts.sum())
    sizes = np.zeros(n + 1, dtype=np.int64)
    first = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    border = [np.empty(0, dtype=np.int64)]
    for (i, j), offset in np.ndenumerate(offsets):
        p = grid[i][j]
        sizes[offset + 1 : offset + p.count + 1] = p.sizes[1:]
        first[offset + 1 : offset + p.count + 1] = p.first[1:]
        border.append(p.border + offset)

    def global_ids(i: int, j: int, ids: np.ndarray) -> np.ndarray:
        return np.where(ids > 0, ids + offsets[i, j], 0)

    n_y, n_x = counts.shape
    pairs = []
    for i in range(n_y - 1):  # between block rows i and i + 1, across the whole width
        above = np.concatenate([global_ids(i, j, grid[i][j].bottom) for j in range(n_x)])
        below = np.concatenate([global_ids(i + 1, j, grid[i + 1][j].top) for j in range(n_x)])
        pairs += touching_pairs(above, below, np.flatnonzero(structure[2]) - 1)
    for j in range(n_x - 1):  # between block columns j and j + 1, across the whole height
        left = np.concatenate([global_ids(i, j, grid[i][j].right) for i in range(n_y)])
        right = np.concatenate([global_ids(i, j + 1, grid[i][j + 1].left) for i in range(n_y)])
        pairs += touching_pairs(left, right, np.flatnonzero(structure[:, 2]) - 1)
    a = np.concatenate([np.empty(0, dtype=np.int64)] + [x for x, _ in pairs])
    b = np.concatenate([np.empty(0, dtype=np.int64)] + [y for _, y in pairs])
    component, comp_sizes, comp_first = join_pieces(n + 1, a, b, sizes, first)
    # Id 0 (background) has no edges, so its component holds it alone; make that component 0.
    zero = component[0]
    component = np.where(component == zero, 0, np.where(component == 0, zero, component))
    m = comp_sizes.size
    swap = np.arange(m)
    swap[[0, zero]] = swap[[zero, 0]]
    comp_sizes, comp_first = comp_sizes[swap], comp_first[swap]
    on_border = np.zeros(m, dtype=bool)
    on_border[component[np.concatenate(border)]] = True
    return _Components(offsets=offsets, component=component, sizes=comp_sizes, first=comp_first, border=on_border)


def _relabel(
    foreground: Any, components: _Components, table: np.ndarray, *, structure: np.ndarray, invert: bool = False
) -> Any:
    """Lazy image of ``table[component]`` at every pixel of the components (0 elsewhere).

    Each block is labelled again as in the first pass (``ndi.label`` is
    deterministic), so its piece ids map through the block's offset.
    """
    import dask

    # The tables travel to the workers once each, as one graph key, not with every task.
    return foreground.map_blocks(
        _relabel_block,
        structure=structure,
        invert=invert,
        lut=dask.delayed(table[components.component]),
        offsets=dask.delayed(components.offsets),
        meta=np.empty((0, 0), dtype=table.dtype),
    )


def _relabel_block(
    foreground: np.ndarray, *, structure: np.ndarray, invert: bool, lut: np.ndarray, offsets: np.ndarray, block_id=None
) -> np.ndarray:
    ids, count = ndi.label(~foreground if invert else foreground, structure=structure)
    offset = offsets[block_id]
    table = lut[offset : offset + count + 1].copy()
    table[0] = 0
    return table[ids]


# ----------------------------------------------------------------------- holes


def _hole_owners(foreground: Any, objects: _Components, gaps: _Components) -> tuple[np.ndarray, np.ndarray]:
    """Holes enclosed by a single object: their background components and the owning object components.

    As ``segtool.baseline._owned_holes``: a hole is a background component not
    touching the image border; each object pixel next to holes counts for the
    highest-numbered of them (numbered in raster order of their first pixel,
    as ``ndi.label`` numbers them in memory), and a hole whose rim pixels all
    belong to one object is that object's.
    """
    import dask

    is_hole = (gaps.sizes > 0) & ~gaps.border
    is_hole[0] = False
    holes = np.flatnonzero(is_hole)
    if holes.size == 0:
        return holes, holes
    holes = holes[np.argsort(gaps.first[holes], kind="stable")]
    rank = np.zeros(len(gaps.sizes), dtype=np.int64)
    rank[holes] = np.arange(1, holes.size + 1)
    hole_rank = _relabel(foreground, gaps, rank, structure=_GAP_STRUCTURE, invert=True)
    # Highest hole rank among each pixel's 4-neighbours (the grey dilation of
    # _owned_holes); the halo gives block-edge pixels their outside neighbours.
    nearby = hole_rank.map_overlap(
        ndi.grey_dilation, depth=1, boundary="none", footprint=_GAP_STRUCTURE, meta=np.empty((0, 0), dtype=np.int64)
    )
    owner = _relabel(foreground, objects, np.arange(len(objects.sizes)), structure=OBJECT_STRUCTURE)
    nearby, owner = dask.optimize(nearby, owner)  # one computation, sharing the foreground
    tasks = [
        dask.delayed(_rim_block)(a, b)
        for a, b in zip(
            nearby.to_delayed(optimize_graph=False).ravel(), owner.to_delayed(optimize_graph=False).ravel(), strict=True
        )
    ]
    lowest = np.full(holes.size + 1, np.iinfo(np.int64).max, dtype=np.int64)
    highest = np.zeros(holes.size + 1, dtype=np.int64)
    for ranks, low, high in dask.compute(*tasks):
        np.minimum.at(lowest, ranks, low)
        np.maximum.at(highest, ranks, high)
    single = np.flatnonzero(lowest == highest)
    return holes[single - 1], highest[single]


def _rim_block(nearby: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hole ranks seen from this block's object pixels, with the lowest and highest object seen for each."""
    rim = (owner > 0) & (nearby > 0)
    ranks, owners = nearby[rim], owner[rim].astype(np.int64)
    found, index = np.unique(ranks, return_inverse=True)
    low = np.full(found.size, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.zeros(found.size, dtype=np.int64)
    np.minimum.at(low, index, owners)
    np.maximum.at(high, index, owners)
    return found, low, high
