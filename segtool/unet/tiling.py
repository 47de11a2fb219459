"""Sliding-window (tiled) inference: plan the tiles, weight them, blend them.

Three small pieces:

- :func:`plan_tiles` places tiles of a fixed size evenly over an image, the
  last one flush with the far edge, overlapping by at least a given fraction.
- :func:`blend_window` is the weight every tile's prediction is multiplied by
  before tiles are summed: a Gaussian bump, high in the middle of the tile
  where the network saw the most context, small but never zero at its edges,
  so overlapping tiles fade into each other without seams and the corners of
  the image (covered by one tile corner only) still get a value.
- :func:`predict_tiled` runs any ``predictor`` callable over the tiles in
  batches and returns the blended maps. :func:`predict_tiled_rows` is the
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

__all__ = ["plan_tiles", "blend_window", "predict_tiled", "predict_tiled_rows", "tile_shape"]

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
    overlap: float = 0.25,
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


def _pad_amounts(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[int, int]]:
    return [(0, max(0, t - n)) for n, t in zip(shape, tile)]


def _pad_reflect(image: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
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
    overlap: float = 0.25,
    batch_size: int = 4,
    out_channels: int,
    on_tile: TileCallback | None = None,
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
    if height < tile_h or width < tile_w:
        raise InputError(f"image of shape {(height, width)} is smaller than the tile {(tile_h, tile_w)}; pad it first")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if int(out_channels) < 1:
        raise InputError(f"out_channels must be >= 1, got {out_channels!r}")
    out_channels = int(out_channels)
    tiles = plan_tiles((height, width), (tile_h, tile_w), overlap)
    total = len(tiles)
    window = blend_window((tile_h, tile_w))

    # Rolling accumulators for rows [base, base + capacity).
    base = 0
    capacity = 2 * tile_h
    acc = np.zeros((out_channels, capacity, width), np.float32)
    weight = np.zeros((capacity, width), np.float32)
    rows_cache: dict[int, np.ndarray] = {}
    remaining_in_row: dict[int, int] = {}
    for sy, _ in tiles:
        remaining_in_row[sy.start] = remaining_in_row.get(sy.start, 0) + 1

    done = 0
    for first in range(0, total, batch_size):
        batch_tiles = tiles[first : first + batch_size]
        inputs = []
        for sy, sx in batch_tiles:
            y = sy.start
            if y not in rows_cache:
                block = np.asarray(read_rows(y, y + tile_h), dtype=np.float32)
                if block.ndim != 3 or block.shape[1:] != (tile_h, width):
                    raise InputError(
                        f"read_rows({y}, {y + tile_h}) returned shape {block.shape}, expected (C, {tile_h}, {width})"
                    )
                rows_cache[y] = block
            inputs.append(rows_cache[y][:, :, sx])
            remaining_in_row[y] -= 1
        batch = np.ascontiguousarray(np.stack(inputs))
        del inputs
        maps = np.asarray(predictor(batch))
        expected = (len(batch_tiles), out_channels, tile_h, tile_w)
        if maps.shape != expected:
            raise InputError(f"predictor returned shape {maps.shape}, expected {expected}")

        bottom = max(sy.stop for sy, _ in batch_tiles)
        if bottom - base > capacity:
            capacity = bottom - base
            grown_acc = np.zeros((out_channels, capacity, width), np.float32)
            grown_weight = np.zeros((capacity, width), np.float32)
            grown_acc[:, : acc.shape[1]] = acc
            grown_weight[: weight.shape[0]] = weight
            acc, weight = grown_acc, grown_weight
        for (sy, sx), tile_maps in zip(batch_tiles, maps):
            rows = slice(sy.start - base, sy.stop - base)
            acc[:, rows, sx] += tile_maps * window
            weight[rows, sx] += window
        for y in [y for y, left in remaining_in_row.items() if left == 0 and y in rows_cache]:
            del rows_cache[y]
        done += len(batch_tiles)
        if on_tile is not None:
            on_tile(done, total)

        # Rows above the next tile still to come are final.
        final = tiles[done][0].start if done < total else height
        if final > base:
            n = final - base
            yield base, acc[:, :n] / weight[:n]
            keep = capacity - n
            acc[:, :keep] = acc[:, n:]
            weight[:keep] = weight[n:]
            acc[:, keep:] = 0
            weight[keep:] = 0
            base = final


def predict_tiled(
    image: np.ndarray,
    predictor: Predictor,
    *,
    tile: int | Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 4,
    out_channels: int,
    on_tile: TileCallback | None = None,
) -> np.ndarray:
    """Predict an image of any size tile by tile and blend the tiles.

    The image is padded by reflection where it is smaller than the tile and
    cropped back afterwards.

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
    padded = _pad_reflect(data, _pad_amounts((height, width), sizes))
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
    ):
        stop = min(start + band.shape[1], height)
        if stop > start:
            out[:, start:stop] = band[:, : stop - start, :width]
    return out
