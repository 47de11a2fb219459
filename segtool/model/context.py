"""How much context a network needs: the halo of tiled inference.

A tile's prediction differs from whole-image inference only near the tile's
edges, where the network sees zero padding instead of the neighbouring
pixels. :func:`measure_context` measures how far in from a tile edge that
difference still exceeds a tolerance, on a real image: it predicts the whole
image once, then a few tiles of it, and compares them pixel by pixel as a
function of the distance to the nearest cut edge (edges that are also image
edges do not count: whole-image inference pads there too).

Tiled inference with a halo of at least that many pixels, keeping only the
tile cores (:func:`segtool.pipeline.tiling.plan_halo_tiles`), reproduces
whole-image inference within the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segtool.errors import InputError

__all__ = ["ContextProfile", "measure_context"]


@dataclass(frozen=True)
class ContextProfile:
    """Result of :func:`measure_context`.

    Attributes
    ----------
    context : int
        Smallest distance (pixels) from a cut tile edge beyond which every
        compared pixel matched whole-image inference within ``tolerance``.
    tolerance : float
    max_diff : ndarray of float64
        ``max_diff[d]``: largest absolute difference, over all channels and
        compared tiles, among pixels at distance ``>= d`` from a cut edge.
    """

    context: int
    tolerance: float
    max_diff: np.ndarray


def _edge_distance(tile: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """Distance of every tile pixel to the nearest tile edge that is not an image edge."""
    (sy, sx), (height, width) = tile, shape
    big = np.iinfo(np.int32).max
    ys = np.arange(sy.stop - sy.start)
    xs = np.arange(sx.stop - sx.start)
    top = ys if sy.start > 0 else np.full_like(ys, big)
    bottom = ys[::-1] if sy.stop < height else np.full_like(ys, big)
    left = xs if sx.start > 0 else np.full_like(xs, big)
    right = xs[::-1] if sx.stop < width else np.full_like(xs, big)
    return np.minimum.outer(np.minimum(top, bottom), np.minimum(left, right))


def measure_context(
    image: np.ndarray,
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    tile: int = 128,
    align: int = 16,
    tolerance: float = 1e-3,
) -> ContextProfile:
    """Measure how far a cut tile edge still changes a network's output.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        A normalised input, ideally real data, with ``H`` and ``W`` multiples
        of ``align`` and at least ``3 * tile``.
    predictor : callable
        ``(N, C, h, w)`` float32 -> ``(N, C_out, h, w)`` maps, as in
        :mod:`segtool.pipeline.tiling`.
    tile : int, optional
        Side of the probe tiles (a multiple of ``align``); the measured
        context is at most ``tile // 2``.
    align : int, optional
        Tile starts are multiples of this (``2**depth`` for a U-Net, whose
        pooling grid must line up with the whole image's).
    tolerance : float, optional
        Largest difference that counts as "no change".

    Returns
    -------
    ContextProfile

    Raises
    ------
    InputError
        If the image is too small or not aligned, or the tile not a multiple
        of ``align``.

    Examples
    --------
    >>> def blur(batch):  # mean of 5 pixels along x, zero beyond the tile: reaches 2 pixels
    ...     padded = np.pad(batch, ((0, 0), (0, 0), (0, 0), (2, 2)))
    ...     return sum(padded[..., i : i + batch.shape[-1]] for i in range(5)) / 5
    >>> measure_context(np.random.default_rng(0).random((48, 48)), blur, tile=16, align=16).context
    2
    """
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise InputError(f"image must be (H, W) or (C, H, W), got shape {np.shape(image)}")
    height, width = data.shape[1:]
    if tile < align or tile % align:
        raise InputError(f"tile must be a positive multiple of {align}, got {tile}")
    if height % align or width % align or min(height, width) < 3 * tile:
        raise InputError(f"image must be a multiple of {align} and at least {3 * tile} on each side, got {(height, width)}")
    whole = np.asarray(predictor(data[np.newaxis]))[0]
    worst = np.zeros(tile // 2 + 1, np.float64)
    # Probe tiles at a few aligned places, including ones touching an image edge.
    ys = sorted({0, (height // 2 // align) * align - tile // 2 // align * align, height - tile})
    xs = sorted({0, (width // 2 // align) * align - tile // 2 // align * align, width - tile})
    tiles = [(slice(y, y + tile), slice(x, x + tile)) for y in ys for x in xs]
    batch = np.stack([data[:, sy, sx] for sy, sx in tiles])
    maps = np.asarray(predictor(batch))
    for (sy, sx), out in zip(tiles, maps):
        diff = np.abs(out - whole[:, sy, sx]).max(axis=0)
        dist = np.minimum(_edge_distance((sy, sx), (height, width)), tile // 2)
        np.maximum.at(worst, dist.ravel(), diff.ravel())
    # worst[d] over pixels at distance exactly d -> over pixels at distance >= d
    at_least = np.maximum.accumulate(worst[::-1])[::-1]
    above = np.nonzero(at_least > tolerance)[0]
    context = int(above[-1]) + 1 if above.size else 0
    return ContextProfile(context=context, tolerance=float(tolerance), max_diff=at_least)
