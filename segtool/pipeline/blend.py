"""The network and blend stages: run tiles through a predictor in batches and sum them, weighted.

Every schedule runs the network the same way, whatever cuts the tiles:
:func:`predict_in_batches` stacks ``batch_size`` tiles, calls the predictor
and checks what it returns; :func:`add_weighted` adds each tile's maps,
times the blending window, into running sums of maps and weights, in the
order the tiles come. :class:`RowBlender` keeps those sums for a rolling
band of rows, so a tall image is blended band by band.

Used by :func:`segtool.pipeline.tiling.predict_tiled_rows` (whole images and
bands) and by the Dask block schedule
(:mod:`segtool.distributed.big_predict`); the same tiles in the same order
give the same sums, so every schedule gets the in-memory run's maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["RowBlender", "add_weighted", "predict_in_batches", "timed_predictor"]


def predict_in_batches(
    items: Sequence[Any],
    cut: Callable[[Any], np.ndarray],
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int,
    out_channels: int,
) -> Iterator[tuple[Sequence[Any], np.ndarray]]:
    """Run ``predictor`` on the tiles ``cut(item)`` of ``items``, ``batch_size`` at a time.

    Parameters
    ----------
    items : sequence
        Whatever locates a tile (slices, corners); passed to ``cut`` in order.
    cut : callable
        ``cut(item)`` returns the tile, a (C_in, h, w) array.
    predictor : callable
        (N, C_in, h, w) float32 -> (N, out_channels, h, w) maps.
    batch_size : int
    out_channels : int

    Yields
    ------
    batch : sequence
        The items of this batch.
    maps : (len(batch), out_channels, h, w) ndarray

    Raises
    ------
    InputError
        If the predictor returns another shape.

    Examples
    --------
    >>> image = np.arange(16.0).reshape(1, 4, 4)
    >>> [(b, m.shape) for b, m in predict_in_batches([0, 2], lambda y: image[:, y:y + 2], lambda x: x,
    ...                                               batch_size=1, out_channels=1)]
    [([0], (1, 1, 2, 4)), ([2], (1, 1, 2, 4))]
    """
    for first in range(0, len(items), batch_size):
        batch_items = items[first : first + batch_size]
        batch = np.ascontiguousarray(np.stack([cut(item) for item in batch_items]))
        maps = np.asarray(predictor(batch))
        expected = (len(batch_items), out_channels) + batch.shape[2:]
        if maps.shape != expected:
            raise InputError(f"predictor returned shape {maps.shape}, expected {expected}")
        yield batch_items, maps


def add_weighted(acc: np.ndarray, weight: np.ndarray, maps: np.ndarray, places: Sequence[tuple[slice, ...]],
                 window: np.ndarray) -> None:
    """Add each tile's ``maps * window`` to ``acc`` and ``window`` to ``weight`` at its place (in place).

    Parameters
    ----------
    acc : (C, H, W) ndarray of float32
    weight : (H, W) ndarray of float32
    maps : (N, C, h, w) ndarray
    places : sequence of (slice, slice)
        Where each tile lies in ``acc``.
    window : (h, w) ndarray of float32
        The blending weights (:func:`segtool.pipeline.tiling.blend_window`).

    Examples
    --------
    >>> acc, weight = np.zeros((1, 1, 3), np.float32), np.zeros((1, 3), np.float32)
    >>> add_weighted(acc, weight, np.ones((2, 1, 1, 2)), [(slice(0, 1), slice(0, 2)), (slice(0, 1), slice(1, 3))],
    ...              np.full((1, 2), 0.5, np.float32))
    >>> (acc / weight).tolist(), weight.tolist()
    ([[[1.0, 1.0, 1.0]]], [[0.5, 1.0, 0.5]])
    """
    for place, tile_maps in zip(places, maps):
        acc[(slice(None),) + tuple(place)] += tile_maps * window
        weight[place] += window


class RowBlender:
    """Running weighted sums over a rolling band of image rows.

    Tiles are added in row-major order (:meth:`add`); once no later tile
    reaches above a row, :meth:`finish` hands out the blended maps of the
    rows above it and forgets them.

    Parameters
    ----------
    channels, width : int
    capacity : int
        Rows held at first (grows when a tile reaches further).
    """

    def __init__(self, channels: int, width: int, capacity: int) -> None:
        self.base = 0  # image row of the first held row
        self._acc = np.zeros((channels, capacity, width), np.float32)
        self._weight = np.zeros((capacity, width), np.float32)

    def add(self, places: Sequence[tuple[slice, slice]], maps: np.ndarray, window: np.ndarray) -> None:
        """Add tiles at ``places`` (image rows, columns), growing the band if they reach below it."""
        capacity = self._weight.shape[0]
        bottom = max(rows.stop for rows, _ in places)
        if bottom - self.base > capacity:
            capacity = bottom - self.base
            grown_acc = np.zeros(self._acc.shape[:1] + (capacity,) + self._acc.shape[2:], np.float32)
            grown_weight = np.zeros((capacity, self._weight.shape[1]), np.float32)
            grown_acc[:, : self._acc.shape[1]] = self._acc
            grown_weight[: self._weight.shape[0]] = self._weight
            self._acc, self._weight = grown_acc, grown_weight
        shifted = [(slice(rows.start - self.base, rows.stop - self.base), cols) for rows, cols in places]
        add_weighted(self._acc, self._weight, maps, shifted, window)

    def finish(self, final: int) -> np.ndarray | None:
        """Blended maps of rows ``base:final`` (a new array), or None if there are none; they are dropped."""
        if final <= self.base:
            return None
        n = final - self.base
        blended = self._acc[:, :n] / self._weight[:n]
        keep = self._weight.shape[0] - n
        self._acc[:, :keep] = self._acc[:, n:]
        self._weight[:keep] = self._weight[n:]
        self._acc[:, keep:] = 0
        self._weight[keep:] = 0
        self.base = final
        return blended


def timed_predictor(predictor: Callable[[np.ndarray], np.ndarray], stages: dict[str, float] | None,
                    name: str = "network") -> Callable[[np.ndarray], np.ndarray]:
    """``predictor``, adding the wall time of each call to ``stages[name]`` (no-op when ``stages`` is None).

    Examples
    --------
    >>> stages = {}
    >>> double = timed_predictor(lambda batch: 2 * batch, stages)
    >>> double(np.ones(2)).tolist(), sorted(stages)
    ([2.0, 2.0], ['network'])
    """
    if stages is None:
        return predictor

    def timed(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return predictor(batch)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start

    return timed
