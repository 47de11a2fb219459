"""Where each Dask block reads, runs the network and keeps pixels, so its maps are the in-memory run's.

The in-memory schedule (:func:`segtool.infer.predict.predict_image`) resizes
the normalised image by ``scale``, cuts it into the tiles of one
:class:`segtool.pipeline.options.TilePlan` (halo tiles keeping their cores,
or with ``overlap`` blended tiles), and resizes the maps back. A block of
the Dask schedule (:mod:`segtool.distributed.big_predict`) needs those maps
on its *window* (the block plus its halo). :func:`plan_blocks` works out,
per block:

- the maps it needs, in the resized image's pixels (the window, plus what
  the resize back reads around it: :func:`segtool.pipeline.resize.span_source`);
- the tiles of the *whole image's* tile grid (:class:`TileGrid`) that give
  those maps: halo tiles whose core meets them, or blended tiles that
  overlap them;
- the resized input those tiles read, and the image pixels it is resized
  from: the block's ``region``, all a Dask task reads.

:func:`block_maps` then computes the window's maps from the region with the
same arithmetic as the whole run (the same tiles, the same blend, the same
resize: :func:`segtool.pipeline.resize.resized_span`), so they equal the
in-memory maps within float rounding and the network's batch-to-batch
noise, whatever the block size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from segtool.pipeline.blend import add_weighted, predict_in_batches
from segtool.pipeline.resize import resized_span, span_source

__all__ = ["BlockPlan", "NetPlan", "TileGrid", "block_maps", "plan_blocks", "tile_grid"]

#: One tile along one axis: (start, stop, keep_start, keep_stop) in the resized image's pixels.
AxisTile = tuple[int, int, int, int]


@dataclass(frozen=True)
class TileGrid:
    """The whole image's tile grid, as the in-memory run lays it out.

    Attributes
    ----------
    shape : (int, int)
        The image's size.
    scaled : (int, int)
        Its size at the network (``shape`` times ``scale``, rounded).
    tiles : (tuple of AxisTile, tuple of AxisTile)
        Tiles per axis; the grid is their product, row-major. A halo tile
        keeps ``keep_start:keep_stop`` (its core); a blended tile keeps all.
    blend : bool
        Blend overlapping tiles with a Gaussian window instead of keeping cores.
    batch_size : int
        Tiles per network call.
    """

    shape: tuple[int, int]
    scaled: tuple[int, int]
    tiles: tuple[tuple[AxisTile, ...], tuple[AxisTile, ...]]
    blend: bool
    batch_size: int

    @property
    def shrinks(self) -> bool:
        """The resize before the network shrinks an axis (it blurs first)."""
        return self.scaled[0] < self.shape[0] or self.scaled[1] < self.shape[1]

    @property
    def grows(self) -> bool:
        """The resize back shrinks an axis."""
        return self.shape[0] < self.scaled[0] or self.shape[1] < self.scaled[1]


def tile_grid(config, shape: tuple[int, int], tiling, *, scale: float = 1.0, device_type: str = "cpu",
              precision: str = "fp32") -> TileGrid:
    """The tile grid the in-memory run uses for an image of ``shape`` at ``scale``.

    Parameters
    ----------
    config : UNetConfig
    shape : (int, int)
    tiling : TileOptions
        Tile size, ``overlap`` (blend) or ``tile_halo``, batch size.
    scale : float, optional
        The resize before the network.
    device_type, precision : str, optional
        Where and how the network runs (they size the default halo tile).

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> from segtool.pipeline.options import TileOptions
    >>> grid = tile_grid(UNetConfig(depth=4), (3000, 500), TileOptions(), scale=0.5)
    >>> grid.scaled, [t[:2] for t in grid.tiles[0]], grid.tiles[1], grid.blend
    ((1500, 250), [(0, 864), (640, 1504)], ((0, 256, 0, 256),), False)
    """
    from segtool.pipeline.options import budget_tile, default_tile_halo, resolve_tile
    from segtool.pipeline.tiling import halo_padded_shape, plan_halo_tiles, plan_tiles

    scaled = tuple(max(1, round(int(n) * scale)) for n in shape) if scale != 1.0 else tuple(int(n) for n in shape)
    plan = tiling.plan(config, scaled, device_type=device_type, precision=precision)  # checks the options too
    if tiling.overlap is not None:
        tile_hw = resolve_tile(config, scaled, tiling.tile)
        per_axis = tuple(
            tuple((s.start, s.stop, s.start, s.stop) for (s,) in plan_tiles((max(n, t),), (t,), float(tiling.overlap)))
            for n, t in zip(scaled, tile_hw)
        )
        return TileGrid(tuple(shape), scaled, per_axis, True, plan.batch_size)
    align = int(config.size_multiple)
    halo = default_tile_halo(config) if tiling.tile_halo is None else int(tiling.tile_halo)
    largest = budget_tile(config, device_type=device_type, precision=precision) if tiling.tile is None else int(tiling.tile)
    padded = halo_padded_shape(scaled, align)
    per_axis = tuple(
        tuple((t.start, t.stop, c.start, c.stop) for (t,), (c,) in plan_halo_tiles((n,), (largest,), halo, align=align))
        for n in padded
    )
    return TileGrid(tuple(int(n) for n in shape), scaled, per_axis, False, plan.batch_size)


@dataclass(frozen=True)
class NetPlan:
    """The network's share of one block, in the resized image's pixels (absolute coordinates).

    ``scaled`` is the resized input computed from the block's region (clipped
    to the image), ``pad`` the reflection added after it (an image shorter
    than a tile, or not a multiple of ``2**depth``), ``tiles`` the tiles per
    axis (relative to ``scaled``'s start), ``maps`` the maps the window needs.
    """

    scaled: tuple[slice, slice]
    pad: tuple[tuple[int, int], tuple[int, int]]
    tiles: tuple[tuple[AxisTile, ...], tuple[AxisTile, ...]]
    maps: tuple[slice, slice]


@dataclass(frozen=True)
class BlockPlan:
    """Where one block reads, predicts and keeps pixels.

    ``region`` (image coordinates) is what the block reads. ``window``
    (region coordinates) is the block plus its halo, post-processed
    together; ``core`` and ``seams`` (window coordinates) are the block
    itself and the strips compared with the neighbours (keyed "top",
    "bottom", "left", "right"). ``net`` is None when no grid was given
    (tests of the merge: the region is the window).
    """

    region: tuple[slice, slice]
    window: tuple[slice, slice]
    core: tuple[slice, slice]
    seams: dict[str, tuple[slice, slice]] = field(hash=False)
    net: NetPlan | None = None


def _axis_net(grid: TileGrid, axis: int, w0: int, w1: int):
    """(region, NetPlan pieces) along one axis for a window ``w0:w1`` of the image."""
    n, m = grid.shape[axis], grid.scaled[axis]
    need = span_source(m, n, w0, w1, shrinking=grid.grows)
    if grid.blend:
        tiles = [t for t in grid.tiles[axis] if t[0] < need[1] and t[1] > need[0]]
    else:
        tiles = [t for t in grid.tiles[axis] if t[2] < need[1] and t[3] > need[0]]
    r0, r1 = tiles[0][0], tiles[-1][1]
    clipped = min(r1, m)
    read = span_source(n, m, r0, clipped, shrinking=grid.shrinks)
    relative = tuple((a - r0, b - r0, c - r0, d - r0) for a, b, c, d in tiles)
    return slice(*read), (slice(r0, clipped), (0, r1 - clipped), relative, slice(*need))


def plan_blocks(shape: tuple[int, int], block: int, halo: int, grid: TileGrid | None, *, seam_reach: int):
    """Plan every block (a grid of :class:`BlockPlan`) and list the edges between neighbours.

    An edge is ``(first, second, first_side, second_side, (near_first,
    near_second))``: block indices (row-major), which seam strips to compare,
    and the strip rows in each block's own core next to the edge
    (``seam_reach`` of them).
    """
    height, width = shape
    depth = min(max(1, halo // 2), block)  # strip rows on each side of an edge

    def axis_plan(axis: int, start: int):
        n = shape[axis]
        stop = min(n, start + block)
        w0, w1 = max(0, start - halo), min(n, stop + halo)
        if grid is None:
            region, net = slice(w0, w1), None
        else:
            region, net = _axis_net(grid, axis, w0, w1)
        return {
            "core": slice(start - w0, stop - w0),
            "region": region,
            "window": slice(w0 - region.start, w1 - region.start),
            "net": net,
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
            net = None
            if grid is not None:
                net = NetPlan(*(tuple(pair) for pair in zip(ya["net"], xa["net"])))
            row.append(BlockPlan(region=(ya["region"], xa["region"]), window=(ya["window"], xa["window"]),
                                 core=(ya["core"], xa["core"]), seams=seams, net=net))
        plans.append(row)

    if halo == 0:
        near = (slice(None), slice(None))
    else:
        reach = min(seam_reach, depth)
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


def block_maps(normalized: np.ndarray, plan: BlockPlan, grid: TileGrid, predictor, *, out_channels: int) -> np.ndarray:
    """The in-memory run's maps on ``plan.window``, from the block's normalised region.

    Parameters
    ----------
    normalized : (h, w) ndarray of float32
        The block's region (``plan.region``), normalised with the whole
        image's percentiles.
    plan : BlockPlan
    grid : TileGrid
    predictor : callable
        (N, 1, h, w) -> (N, out_channels, h, w) activated maps.
    out_channels : int

    Returns
    -------
    (out_channels, *window shape) ndarray of float32
    """
    from segtool.pipeline.tiling import blend_window, pad_reflect

    net = plan.net
    starts = tuple(s.start for s in plan.region)
    data = normalized[np.newaxis].astype(np.float32, copy=False)
    if grid.scaled != grid.shape:
        data = resized_span(data, starts, grid.shape, grid.scaled, tuple(s.start for s in net.scaled),
                            tuple(s.stop for s in net.scaled), shrinking=grid.shrinks)
    data = pad_reflect(data, list(net.pad))
    acc = np.zeros((out_channels,) + data.shape[1:], np.float32)
    corners = list(itertools.product(*net.tiles))
    size = (net.tiles[0][0][1] - net.tiles[0][0][0], net.tiles[1][0][1] - net.tiles[1][0][0])
    batches = predict_in_batches(corners, lambda c: data[:, c[0][0] : c[0][1], c[1][0] : c[1][1]], predictor,
                                 batch_size=grid.batch_size, out_channels=out_channels)
    if grid.blend:
        weight = np.zeros(data.shape[1:], np.float32)
        window = blend_window(size)
        for batch, maps in batches:
            add_weighted(acc, weight, maps, [(slice(y[0], y[1]), slice(x[0], x[1])) for y, x in batch], window)
    else:
        for batch, maps in batches:
            for (y, x), tile_maps in zip(batch, maps):
                acc[:, y[2] : y[3], x[2] : x[3]] = tile_maps[:, y[2] - y[0] : y[3] - y[0], x[2] - x[0] : x[3] - x[0]]
    keep = tuple(slice(m.start - s.start, m.stop - s.start) for m, s in zip(net.maps, net.scaled))
    maps = acc[(slice(None),) + keep] / weight[keep] if grid.blend else acc[(slice(None),) + keep]
    window = tuple(slice(r.start + w.start, r.start + w.stop) for r, w in zip(plan.region, plan.window))
    if grid.scaled != grid.shape:
        maps = resized_span(maps, tuple(m.start for m in net.maps), grid.scaled, grid.shape,
                            tuple(w.start for w in window), tuple(w.stop for w in window), shrinking=grid.grows)
    return maps
