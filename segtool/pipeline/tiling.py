"""Sliding-window (tiled) inference: plan the tiles, weight them, blend them.

Three small pieces:

- :func:`plan_tiles` places tiles of a fixed size evenly over an image, the
  last one flush with the far edge, overlapping by at least a given fraction.
- :func:`blend_window` is the weight every tile's prediction is multiplied by
  before tiles are summed: a Gaussian bump, high in the middle of the tile
  where the network saw the most context, small but never zero at its edges,
  so overlapping tiles fade into each other without seams and the corners of
  the image (covered by one tile corner only) still get a value.
- :func:`plan_halo_tiles` is the other layout: as few large tiles as cover
  the image when each keeps only its *core*, the part at least ``halo``
  pixels from any cut edge. With ``halo`` at least the network's effective
  context (:func:`segtool.model.context.measure_context`) the cores are what
  whole-image inference would give, and large tiles recompute only the thin
  halos (about 1.1-1.25x the pixels instead of 1.78x for 25 % overlap).
- :func:`predict_tiled` runs any ``predictor`` callable over the tiles in
  batches and returns the blended (or, with a halo, cropped) maps. :func:`predict_tiled_rows` is the
  same computation, streamed: it yields finished rows as soon as no later
  tile can touch them, so an image much larger than memory can be predicted
  band by band with exactly the same result.

Nothing here knows about torch: a predictor maps a ``(N, C_in, h, w)``
float32 array to ``(N, C_out, h, w)`` maps, so tests pass plain functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from segtool.errors import InputError
from segtool.pipeline.blend import RowBlender, predict_in_batches

__all__ = [
    "BLEND_BATCH_SIZE",
    "BLEND_OVERLAP",
    "blend_window",
    "halo_padded_shape",
    "pad_mode",
    "plan_halo_tiles",
    "plan_tiles",
    "predict_tiled",
    "predict_tiled_rows",
    "reflect_rows",
    "tile_shape",
    "pad_reflect",
]

#: Overlap of blended tiles when none is given (the default here, and where a schedule needs a fixed tile grid:
#: Dask blocks, Z stacks, ``TileOptions.blended``).
BLEND_OVERLAP = 0.25
#: Tiles per network call when tiles are blended and no batch size was given.
BLEND_BATCH_SIZE = 4

Predictor = Callable[[np.ndarray], np.ndarray]
TileCallback = Callable[[int, int], None]


def _as_tile(tile: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
        sizes = (int(tile),) * ndim
    else:
        try:
            sizes = tuple(int(t) for t in tile)
        except (TypeError, ValueError):
            raise InputError(f"tile must be an int or a sequence of ints, got {tile!r}") from None
    if len(sizes) != ndim:
        raise InputError(f"tile {tile!r} does not match an image with {ndim} axes")
    if any(t < 1 for t in sizes):
        raise InputError(f"tile sizes must be >= 1, got {tile!r}")
    return sizes


def _check_overlap(overlap: float) -> float:
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise InputError(f"overlap must be a number in [0, 1), got {overlap!r}") from None
    if not 0.0 <= value < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap!r}")
    return value


def _axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets along one axis: evenly spaced, first at 0, last at ``length - tile``."""
    if length <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    count = math.ceil((length - tile) / step - 1e-9) + 1
    return sorted({int(round(s)) for s in np.linspace(0, length - tile, count)})


def tile_shape(shape: Sequence[int], tile: int | Sequence[int]) -> tuple[int, ...]:
    """Return the shape tiles actually have on ``shape``: ``tile``, shrunk to axes shorter than it.

    Examples
    --------
    >>> tile_shape((100, 1000), 256)
    (100, 256)
    """
    sizes = _as_tile(tile, len(shape))
    return tuple(min(int(n), t) for n, t in zip(shape, sizes))


def plan_tiles(
    shape: Sequence[int],
    tile: int | Sequence[int],
    overlap: float = BLEND_OVERLAP,
) -> list[tuple[slice, ...]]:
    """Place overlapping tiles of a fixed size over an image.

    Along each axis the tiles are evenly spaced, the first starts at 0 and the
    last ends exactly at the image edge; neighbouring tiles overlap by at least
    ``overlap`` times the tile size (rounding can add a pixel). An axis shorter
    than the tile gets a single tile spanning the whole axis (shorter than
    ``tile``); pad the image first if every tile must have the full size.

    Parameters
    ----------
    shape : sequence of int
        Image shape, e.g. ``(H, W)``.
    tile : int or sequence of int
        Tile size, the same on every axis or one per axis.
    overlap : float, optional
        Minimum overlap between neighbours as a fraction of the tile, in
        ``[0, 1)``.

    Returns
    -------
    tiles : list of tuple of slice
        One ``(slice_y, slice_x, ...)`` per tile, in row-major order (the
        first axis varies slowest).

    Raises
    ------
    InputError
        If the shape is empty, a tile size is < 1 or ``overlap`` is outside
        ``[0, 1)``.

    Examples
    --------
    >>> [(s.start, s.stop) for s, _ in plan_tiles((10, 4), 4, 0.25)]
    [(0, 4), (3, 7), (6, 10)]
    >>> plan_tiles((3, 3), 8)
    [(slice(0, 3, None), slice(0, 3, None))]
    """
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise InputError(f"cannot tile an image of shape {shape}")
    sizes = _as_tile(tile, len(shape))
    overlap = _check_overlap(overlap)
    per_axis = [
        [slice(start, start + min(t, n)) for start in _axis_starts(n, t, overlap)]
        for n, t in zip(shape, sizes)
    ]
    return list(itertools.product(*per_axis))


def blend_window(shape: Sequence[int], *, sigma_scale: float = 0.125, floor: float = 1e-6) -> np.ndarray:
    """Weight map used to blend one tile's prediction with its neighbours'.

    A separable Gaussian centred on the tile with standard deviation
    ``sigma_scale`` times the tile size on each axis, scaled to a maximum of 1
    and raised to at least ``floor`` everywhere, so it is smooth inside the
    tile and never zero (every pixel of the image gets a positive total
    weight, even a corner covered by a single tile's corner).

    Parameters
    ----------
    shape : sequence of int
        Tile shape.
    sigma_scale : float, optional
        Standard deviation as a fraction of the tile size.
    floor : float, optional
        Smallest weight, in ``(0, 1]``.

    Returns
    -------
    window : ndarray of float32
        Array of ``shape``; largest (1.0) in the middle, symmetric.

    Examples
    --------
    >>> w = blend_window((5, 5))
    >>> float(w[2, 2]), bool(w.min() > 0), bool(np.allclose(w, w.T))
    (1.0, True, True)
    """
    if not 0 < floor <= 1:
        raise InputError(f"floor must be in (0, 1], got {floor}")
    if not sigma_scale > 0:
        raise InputError(f"sigma_scale must be > 0, got {sigma_scale}")
    window = np.ones((), np.float64)
    for n in shape:
        n = int(n)
        if n < 1:
            raise InputError(f"window shape must be positive, got {tuple(shape)}")
        centre = (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        profile = np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2)
        window = np.multiply.outer(window, profile / profile.max())
    return np.maximum(window, floor).astype(np.float32)


def halo_padded_shape(shape: Sequence[int], align: int = 1) -> tuple[int, ...]:
    """Shape an image is padded to (bottom/right) before halo tiling: each axis up to a multiple of ``align``.

    Examples
    --------
    >>> halo_padded_shape((100, 256), 16)
    (112, 256)
    """
    align = max(1, int(align))
    return tuple(align * math.ceil(int(n) / align) for n in shape)


def _axis_halo_plan(length: int, tile: int, halo: int, align: int) -> tuple[list[int], int, list[int]]:
    """Tile starts, the tile size and the core boundaries along one axis."""
    if length <= tile:
        return [0], length, [0, length]
    if tile - 2 * halo < align:
        raise InputError(
            f"a tile of {tile} pixels leaves no core inside a halo of {halo} pixels on each side; "
            f"use a tile of at least {2 * halo + align} pixels, or an overlap instead of a halo"
        )
    count = math.ceil((length - 2 * halo) / (tile - 2 * halo))
    size = min(tile, align * math.ceil((length + 2 * halo * (count - 1)) / count / align))
    while True:
        # Evenly spaced, aligned starts, the last flush with the end; neighbours must share 2 * halo.
        starts = [align * round(i * (length - size) / (count - 1) / align) for i in range(count)] if count > 1 else [0]
        if all(starts[i] + size - starts[i + 1] >= 2 * halo for i in range(count - 1)):
            break
        if size + align <= tile:
            size += align
        else:
            count += 1
            size = min(tile, align * math.ceil((length + 2 * halo * (count - 1)) / count / align))
    # Each tile keeps the pixels nearer its own middle: cut in the middle of every overlap.
    cuts = [0] + [(starts[i + 1] + starts[i] + size) // 2 for i in range(count - 1)] + [length]
    return starts, size, cuts


def plan_halo_tiles(
    shape: Sequence[int],
    tile: int | Sequence[int],
    halo: int,
    *,
    align: int = 1,
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Place as few tiles as cover an image when each keeps only its core.

    The *core* of a tile is the part at least ``halo`` pixels from every
    edge of the tile that is not also an edge of the image; the cores
    partition the image. All tiles have the same size, at most ``tile``
    (smaller when fewer pixels suffice), and start at multiples of ``align``.

    Parameters
    ----------
    shape : sequence of int
        Image shape, each axis a multiple of ``align`` (see
        :func:`halo_padded_shape`).
    tile : int or sequence of int
        Largest tile size per axis.
    halo : int
        Context kept around each core, in pixels, >= 0.
    align : int, optional
        Tile starts and sizes are multiples of this (``2**depth`` for a U-Net,
        so the pooling grid of every tile lines up with the whole image's).

    Returns
    -------
    tiles : list of (tile_slices, core_slices)
        Row-major; ``core_slices`` are in image coordinates and lie inside
        ``tile_slices``.

    Raises
    ------
    InputError
        If a value is out of range, the shape is not aligned, or a tile is
        too small to have a core.

    Examples
    --------
    >>> plan = plan_halo_tiles((1, 100), (1, 60), 10)
    >>> [((t.start, t.stop), (c.start, c.stop)) for (_, t), (_, c) in plan]
    [((0, 60), (0, 50)), ((40, 100), (50, 100))]
    """
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise InputError(f"cannot tile an image of shape {shape}")
    align = int(align)
    if align < 1 or int(halo) < 0:
        raise InputError(f"align must be >= 1 and halo >= 0, got {align} and {halo}")
    if any(n % align for n in shape):
        raise InputError(f"shape {shape} is not a multiple of {align}; pad it first (halo_padded_shape)")
    sizes = _as_tile(tile, len(shape))
    per_axis = []
    for n, t in zip(shape, sizes):
        t = max(align, t // align * align)
        starts, size, cuts = _axis_halo_plan(n, t, int(halo), align)
        per_axis.append([(slice(s, s + size), slice(cuts[i], cuts[i + 1])) for i, s in enumerate(starts)])
    return [tuple(zip(*combo)) for combo in itertools.product(*per_axis)]  # type: ignore[misc]


def pad_mode(shape: Sequence[int]) -> str:
    """``np.pad`` mode for padding an image of ``shape``: "reflect", or "edge" when an axis has one pixel."""
    return "reflect" if all(int(n) > 1 for n in shape) else "edge"


def reflect_rows(
    read_rows: Callable[[int, int], np.ndarray], height: int, padded_height: int, *, mode: str = "reflect"
) -> Callable[[int, int], np.ndarray]:
    """Extend a row reader past the last row the way :func:`numpy.pad` would.

    ``read_rows(start, stop)`` returns ``(C, stop - start, W)`` rows of an
    image ``height`` rows tall; the returned function also serves rows up to
    ``padded_height``, mirrored (``mode="reflect"``) or repeated
    (``"edge"``) below the image, identical to ``np.pad`` on the whole image.

    Examples
    --------
    >>> image = np.arange(12.0).reshape(1, 4, 3)
    >>> read = reflect_rows(lambda a, b: image[:, a:b], 4, 7)
    >>> bool(np.array_equal(read(2, 7), np.pad(image, ((0, 0), (0, 3), (0, 0)), mode="reflect")[:, 2:7]))
    True
    """
    pad = int(padded_height) - int(height)
    if pad <= 0:
        return read_rows
    keep = min(int(height), pad + 1)  # enough rows to mirror ``pad`` rows, as np.pad would from the whole image
    tail: list[np.ndarray] = []

    def read(start: int, stop: int) -> np.ndarray:
        if stop <= height:
            return read_rows(start, stop)
        if not tail:
            block = np.asarray(read_rows(height - keep, height))
            widths = [(0, 0)] * block.ndim
            widths[-2] = (0, pad)
            tail.append(np.pad(block, widths, mode=mode)[..., keep:, :])
        parts = []
        if start < height:
            parts.append(np.asarray(read_rows(start, height)))
        parts.append(tail[0][..., max(start, height) - height : stop - height, :])
        return np.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]

    return read


def _pad_amounts(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[int, int]]:
    return [(0, max(0, t - n)) for n, t in zip(shape, tile)]


def pad_reflect(image: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    """Pad the trailing axes by reflection (or edge repeat for a 1-pixel axis)."""
    if not any(after for _, after in pads):
        return image
    full = [(0, 0)] * (image.ndim - len(pads)) + pads
    mode = "reflect" if all(n > 1 for n in image.shape[-len(pads):]) else "edge"
    return np.pad(image, full, mode=mode)


def predict_tiled_rows(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    predictor: Predictor,
    *,
    tile: int | Sequence[int],
    overlap: float = BLEND_OVERLAP,
    batch_size: int = BLEND_BATCH_SIZE,
    out_channels: int,
    on_tile: TileCallback | None = None,
    tile_halo: int | None = None,
    align: int = 1,
) -> Iterator[tuple[int, np.ndarray]]:
    """Tiled, blended prediction streamed as bands of finished rows.

    Tiles are processed in row-major order; once every tile that overlaps a
    row has been predicted, the row is final and is yielded. Only the rows
    between the oldest unfinished row and the bottom of the current tiles are
    held, so memory grows with the tile height and the image width, not the
    image height.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(start, stop)`` returns rows ``start:stop`` of the
        (normalised) input as a ``(C_in, stop - start, W)`` float32 array.
    shape : (H, W) tuple of int
        Image size. Must be at least the tile size on both axes (pad smaller
        images; :func:`predict_tiled` does).
    predictor : callable
        Maps a ``(N, C_in, h, w)`` float32 array to ``(N, out_channels, h, w)``
        maps (already activated).
    tile : int or (int, int)
        Tile size ``(h, w)``.
    overlap : float, optional
        Minimum overlap of neighbouring tiles, fraction of the tile.
    batch_size : int, optional
        Tiles per predictor call.
    out_channels : int
        Channels the predictor returns.
    on_tile : callable, optional
        Called as ``on_tile(done, total)`` after every batch.
    tile_halo : int, optional
        Crop instead of blend: tiles of at most ``tile`` from
        :func:`plan_halo_tiles` with this halo, each keeping only its core
        (``overlap`` is then unused). ``shape`` must be a multiple of
        ``align``.
    align : int, optional
        Alignment of the halo tiles (see :func:`plan_halo_tiles`).

    Yields
    ------
    start : int
        First row of the band.
    band : (out_channels, rows, W) ndarray of float32
        Blended maps for rows ``start:start + rows``; bands are consecutive
        and together cover all ``H`` rows.

    Raises
    ------
    InputError
        If an option is out of range, the image is smaller than the tile, or
        the predictor returns the wrong shape.
    """
    height, width = (int(n) for n in shape)
    tile_h, tile_w = _as_tile(tile, 2)
    if tile_halo is None and (height < tile_h or width < tile_w):
        raise InputError(f"image of shape {(height, width)} is smaller than the tile {(tile_h, tile_w)}; pad it first")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if int(out_channels) < 1:
        raise InputError(f"out_channels must be >= 1, got {out_channels!r}")
    out_channels = int(out_channels)
    if tile_halo is not None:
        yield from _predict_cropped_rows(read_rows, (height, width), predictor, plan_halo_tiles(
            (height, width), (tile_h, tile_w), tile_halo, align=align), batch_size, out_channels, on_tile)
        return
    tiles = plan_tiles((height, width), (tile_h, tile_w), overlap)
    total = len(tiles)
    window = blend_window((tile_h, tile_w))
    blender = RowBlender(out_channels, width, 2 * tile_h)
    rows_cache: dict[int, np.ndarray] = {}
    remaining_in_row: dict[int, int] = {}
    for sy, _ in tiles:
        remaining_in_row[sy.start] = remaining_in_row.get(sy.start, 0) + 1

    def cut(place: tuple[slice, slice]) -> np.ndarray:
        y = place[0].start
        if y not in rows_cache:
            rows_cache[y] = _read_block(read_rows, y, y + tile_h, width)
        remaining_in_row[y] -= 1
        return rows_cache[y][:, :, place[1]]

    done = 0
    for batch_tiles, maps in predict_in_batches(tiles, cut, predictor, batch_size=batch_size, out_channels=out_channels):
        blender.add(batch_tiles, maps, window)
        for y in [y for y, left in remaining_in_row.items() if left == 0 and y in rows_cache]:
            del rows_cache[y]
        done += len(batch_tiles)
        if on_tile is not None:
            on_tile(done, total)
        # Rows above the next tile still to come are final.
        start = blender.base
        band = blender.finish(tiles[done][0].start if done < total else height)
        if band is not None:
            yield start, band


def _read_block(read_rows, start: int, stop: int, width: int) -> np.ndarray:
    block = np.asarray(read_rows(start, stop), dtype=np.float32)
    if block.ndim != 3 or block.shape[1:] != (stop - start, width):
        raise InputError(f"read_rows({start}, {stop}) returned shape {block.shape}, expected (C, {stop - start}, {width})")
    return block


def _predict_cropped_rows(read_rows, shape, predictor, tiles, batch_size, out_channels, on_tile):
    """Halo tiling of :func:`predict_tiled_rows`: one row of tiles at a time, each tile's core kept."""
    height, width = shape
    total = len(tiles)
    done = 0
    rows: dict[tuple[int, int], list] = {}
    for tile_slices, core_slices in tiles:
        rows.setdefault((tile_slices[0].start, tile_slices[0].stop), []).append((tile_slices, core_slices))
    for (top, bottom), row_tiles in rows.items():
        block = _read_block(read_rows, top, bottom, width)
        core_y = row_tiles[0][1][0]
        band = np.empty((out_channels, core_y.stop - core_y.start, width), np.float32)
        cores = predict_in_batches(row_tiles, lambda item: block[:, :, item[0][1]], predictor, batch_size=batch_size,
                                   out_channels=out_channels)
        for batch_tiles, maps in cores:
            for ((_, sx), (cy, cx)), tile_maps in zip(batch_tiles, maps):
                band[:, :, cx] = tile_maps[:, cy.start - top : cy.stop - top, cx.start - sx.start : cx.stop - sx.start]
            done += len(batch_tiles)
            if on_tile is not None:
                on_tile(done, total)
        del block
        yield core_y.start, band
        del band  # the consumer has it (or has copied it): not held while the next row is read


def predict_tiled(
    image: np.ndarray,
    predictor: Predictor,
    *,
    tile: int | Sequence[int],
    overlap: float = BLEND_OVERLAP,
    batch_size: int = BLEND_BATCH_SIZE,
    out_channels: int,
    on_tile: TileCallback | None = None,
    tile_halo: int | None = None,
    align: int = 1,
) -> np.ndarray:
    """Predict an image of any size tile by tile and blend the tiles.

    The image is padded by reflection where it is smaller than the tile (with
    ``tile_halo``: up to a multiple of ``align``) and cropped back afterwards.

    Parameters
    ----------
    image : (H, W) or (C_in, H, W) ndarray
        Input, already normalised; not modified.
    predictor : callable
        Maps a ``(N, C_in, h, w)`` float32 array to ``(N, out_channels, h, w)``
        activated maps.
    tile : int or (int, int)
        Tile size.
    overlap : float, optional
        Minimum overlap of neighbouring tiles as a fraction of the tile.
    batch_size : int, optional
        Tiles per predictor call.
    out_channels : int
        Channels the predictor returns.
    on_tile : callable, optional
        ``on_tile(done, total)`` after every batch.
    tile_halo : int, optional
        Crop tile cores instead of blending (:func:`plan_halo_tiles`); with
        at least the predictor's effective context the maps equal the
        predictor run on the whole (padded) image within its tolerance.
    align : int, optional
        Alignment of the halo tiles and of the padded image.

    Returns
    -------
    maps : (out_channels, H, W) ndarray of float32

    Raises
    ------
    InputError
        If the image is not 2-D or 3-D, or an option is out of range.

    Examples
    --------
    >>> image = np.arange(30.0).reshape(5, 6)
    >>> out = predict_tiled(image, lambda b: b, tile=4, out_channels=1)
    >>> out.shape, bool(np.allclose(out[0], image))
    ((1, 5, 6), True)
    """
    data = np.asarray(image)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or 0 in data.shape:
        raise InputError(f"image must be (H, W) or (C, H, W), got shape {np.shape(image)}")
    height, width = data.shape[1:]
    sizes = _as_tile(tile, 2)
    if tile_halo is not None:
        padded_shape = halo_padded_shape((height, width), align)
        padded = pad_reflect(data, [(0, p - n) for n, p in zip((height, width), padded_shape)])
    else:
        padded = pad_reflect(data, _pad_amounts((height, width), sizes))
    out = np.empty((int(out_channels), height, width), np.float32)

    def read_rows(start: int, stop: int) -> np.ndarray:
        return padded[:, start:stop]

    for start, band in predict_tiled_rows(
        read_rows,
        padded.shape[1:],
        predictor,
        tile=sizes,
        overlap=overlap,
        batch_size=batch_size,
        out_channels=out_channels,
        on_tile=on_tile,
        tile_halo=tile_halo,
        align=align,
    ):
        stop = min(start + band.shape[1], height)
        if stop > start:
            out[:, start:stop] = band[:, : stop - start, :width]
    return out
