"""Post-processing an image too large for memory, band by band.

:func:`label_rows_in_bands` takes the blended network maps as
:func:`segtool.pipeline.tiling.predict_tiled_rows` streams them (on the whole
image's tile grid, so with the same tile plan they are the very maps the
in-memory path computes)
and turns them into labels in horizontal bands:

- each band of ``band_rows`` rows is post-processed together with ``halo``
  rows of context above and below it;
- an object belongs to the band that holds its top row and is painted whole,
  even where it reaches into the next band's rows, so an object crossing a
  band edge stays one object;
- when an owned object touches the bottom of the window, the window grows by
  another ``halo`` rows (up to three times), so objects up to ``4 * halo``
  rows tall are never cut;
- labels are numbered consecutively across bands, and finished rows are
  yielded as soon as no later band can paint them.

Only a few bands' worth of maps and labels are in memory at any time. The
network is known here only as a :class:`BandNetwork`: a predictor callable, a
labelling callable and the tile plan; :mod:`segtool.infer.bands` builds one
from a model. The file side (lazy reading, tiled BigTIFF writing) is in
:mod:`segtool.pipeline.bigimage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from segtool.errors import InputError, ModelError
from segtool.pipeline.blend import timed_predictor
from segtool.pipeline.options import SEAM_HALO, TilePlan
from segtool.pipeline.resize import resized_rows, span_source
from segtool.pipeline.stream import prefetch
from segtool.pipeline.tiling import TileCallback, pad_mode, predict_tiled_rows, reflect_rows

__all__ = ["BandNetwork", "LabelBand", "label_rows_in_bands"]


@dataclass(frozen=True)
class BandNetwork:
    """A network as the band schedule sees it: callables and sizes, no network code.

    Attributes
    ----------
    predictor : callable
        ``(N, in_channels, h, w)`` float32 tiles -> ``(N, out_channels, h, w)`` maps.
    label : callable
        ``(out_channels, rows, W)`` maps -> consecutive instance labels of those rows;
        ``label(maps, label_channels_only=True)`` takes only the channels
        ``label_channels`` names, in that order.
    plan : TilePlan
        The tile grid of the whole image (:meth:`segtool.pipeline.options.TileOptions.plan`).
    in_channels, out_channels : int
    scale : float, optional
        The network sees the image resized by this factor (``plan`` is the
        tile grid of the resized image): rows are resized as they are read
        and the maps back, as the whole image's resize would.
    label_channels : tuple of int, optional
        The map channels ``label`` reads. When given, and the maps are not
        kept, the schedule keeps only these (half the buffers' memory for a
        four-channel network).
    """

    predictor: Callable[[np.ndarray], np.ndarray]
    label: Callable[..., np.ndarray]
    plan: TilePlan
    in_channels: int
    out_channels: int
    scale: float = 1.0
    label_channels: tuple[int, ...] | None = None


@dataclass
class LabelBand:
    """Finished rows from :func:`label_rows_in_bands`.

    Attributes
    ----------
    start : int
        First image row of the band.
    labels : (rows, W) ndarray of uint32
        Object labels, numbered consecutively across all bands.
    maps : (C, rows, W) ndarray of float32 or None
        The blended maps for these rows, when asked for.
    n_objects : int
        Objects numbered so far (the largest label in this and earlier bands).
    """

    start: int
    labels: np.ndarray
    maps: np.ndarray | None
    n_objects: int


def _owned_objects(labels: np.ndarray, first_row: int, core: tuple[int, int]) -> np.ndarray:
    """Labels (of a consecutive 1..N image) whose top row, in image rows, lies in ``core``."""
    ids = []
    for index, region in enumerate(_find_objects(labels), start=1):
        if region is not None and core[0] <= first_row + region[0].start < core[1]:
            ids.append(index)
    return np.asarray(ids, dtype=np.int64)


def _find_objects(labels: np.ndarray):
    from scipy import ndimage

    return ndimage.find_objects(labels)


def label_rows_in_bands(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    network: BandNetwork,
    *,
    band_rows: int = 1024,
    halo: int = SEAM_HALO,
    keep_maps: bool = False,
    on_tile: TileCallback | None = None,
    stages: dict[str, float] | None = None,
) -> Iterator[LabelBand]:
    """Predict a large image in horizontal bands, yielding finished label rows.

    The maps come from :func:`segtool.pipeline.tiling.predict_tiled_rows` on
    the whole image's tile grid (``network.plan``). See the module docstring
    for the band rules.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(start, stop)`` returns rows ``start:stop`` of the image,
        already normalised, as ``(C_in, stop - start, W)`` float32 (or
        ``(rows, W)`` for one channel).
    shape : (H, W)
        Image size.
    network : BandNetwork
    band_rows : int, optional
        Rows per band (the core, without the halo).
    halo : int, optional
        Rows of context above and below each band for post-processing; make
        it larger than the tallest object.
    keep_maps : bool, optional
        Also yield the maps of each band (for saving probabilities).
    on_tile : callable, optional
        ``on_tile(done, total)`` progress callback.
    stages : dict, optional
        Receives seconds per stage: ``network`` (the predictor calls),
        ``postprocess`` (labelling the bands); the network runs on a thread of
        its own, one tile row ahead of the post-processing, so the two add up
        to more than the wall time.

    Yields
    ------
    LabelBand
        Consecutive bands covering all rows; ``labels`` are uint32.

    Raises
    ------
    InputError
        If ``band_rows`` < 1 or ``halo`` < 0.
    ModelError
        If the rows have another channel count than ``network.in_channels``.
    """
    if int(band_rows) < 1 or int(halo) < 0:
        raise InputError(f"band_rows must be >= 1 and halo >= 0, got {band_rows} and {halo}")
    band_rows, halo = int(band_rows), int(halo)
    height, width = (int(n) for n in shape)
    plan = network.plan
    scale = float(network.scale)
    # The network sees the image resized by ``scale`` (rows resized as they are read); its maps are resized back.
    size_h, size_w = (max(1, round(n * scale)) for n in (height, width)) if scale != 1.0 else (height, width)
    tile_hw = plan.tile
    # The grid the tiles cover: the image padded (by reflection, as the in-memory path pads) to the tile size,
    # or, for halo tiles, to a multiple of 2**depth.
    if plan.tile_halo is None:
        padded_h, padded_w = max(size_h, tile_hw[0]), max(size_w, tile_hw[1])
    else:
        padded_h, padded_w = (plan.align * -(-n // plan.align) for n in (size_h, size_w))
    mode = pad_mode((size_h, size_w))
    in_channels = network.in_channels

    def image_rows(start: int, stop: int) -> np.ndarray:
        block = np.asarray(read_rows(start, stop), dtype=np.float32)
        if block.ndim == 2:
            block = block[np.newaxis]
        if block.shape[0] != in_channels:
            raise ModelError(f"model expects {in_channels} input channels, the image has {block.shape[0]}")
        return block

    network_rows = image_rows if scale == 1.0 else _resized_rows(image_rows, (height, width), (size_h, size_w))

    def padded_rows(start: int, stop: int) -> np.ndarray:
        block = network_rows(start, stop)
        if padded_w > size_w:
            block = np.pad(block, [(0, 0), (0, 0), (0, padded_w - size_w)], mode=mode)
        return block

    source = reflect_rows(padded_rows, size_h, padded_h, mode=mode)
    predictor = timed_predictor(network.predictor, stages)
    label, channels = network.label, network.out_channels
    if network.label_channels and not keep_maps:
        # Only the channels the labelling reads are kept, from the network's output on: the blended tile rows, the
        # queue between the threads and the row buffer then hold half as much for a four-channel network.
        used = list(network.label_channels)
        predictor = _selecting(predictor, used)
        label = partial(network.label, label_channels_only=True)
        channels = len(used)
    stream = predict_tiled_rows(
        source,
        (padded_h, padded_w),
        predictor,
        out_channels=channels,
        on_tile=on_tile,
        **plan.tiling_options(),
    )
    if scale != 1.0:
        stream = _maps_at_image_size(stream, (size_h, size_w), (height, width))

    max_extra = 3 * halo
    # Room for a band's window grown to its largest plus one tile row of maps arriving: growing the buffer would hold
    # the old and the new array at once. Rows never written are never resident, so the room costs no memory until a
    # band needs it.
    buffer = _RowBuffer(channels, width, capacity=band_rows + 2 * halo + max_extra + int(tile_hw[0] / scale) + 8)
    # The network fills the next rows while this thread labels the current band.
    for_rows = prefetch(stream, depth=1)
    ahead = _LookAhead(label)
    try:
        yield from _label_bands(for_rows, buffer, ahead, height, width, band_rows, halo, max_extra, keep_maps, stages)
    finally:
        ahead.close()
        for_rows.close()


def _label_bands(for_rows, buffer, ahead, height, width, band_rows, halo, max_extra, keep_maps, stages):
    """The band loop of :func:`label_rows_in_bands`: label, keep the owned objects, number and yield."""
    carry = np.zeros((0, width), np.uint32)  # labels already painted below the previous band
    next_label = 1
    core_start = 0
    while core_start < height:
        core_stop = min(height, core_start + band_rows)
        need_start = max(0, core_start - halo)
        extra = 0
        while True:
            # An owned object reaching the bottom of the window may be cut: look further down.
            need_stop = min(height, core_stop + halo + extra)
            while buffer.stop < need_stop:
                start, maps = next(for_rows)
                rows_in_image = max(0, min(maps.shape[1], height - start))
                if rows_in_image:
                    buffer.append(start, maps[:, :rows_in_image, :width])
                del maps  # copied: not held while the network computes the next rows
            if buffer.stop == height and not ahead.started:
                # The network has finished, so the cores it used are free: what is left is labelled on two
                # threads (the labelling releases the GIL), in two bands of equal height when this band has not
                # grown yet. Without this the last one or two bands were labelled one after the other after the
                # network's end, the whole command's tail. Where this happens depends only on the image and
                # tile sizes, so the bands (and the labels) are the same on every run.
                if extra == 0:
                    band_rows = min(band_rows, -(-(height - core_start) // 2))
                    core_stop = min(height, core_start + band_rows)
                    # This band starts with the window an object reaching its bottom would make it grow to: that
                    # second labelling would run alone, after the other thread has finished.
                    extra = max(halo, 1)
                    need_stop = min(height, core_stop + halo + extra)
                ahead.start(buffer, [
                    (max(0, core - halo), min(height, core + band_rows + halo))
                    for core in range(core_stop, height, band_rows)
                ])
            window = buffer.rows(need_start, need_stop)
            labels, seconds = ahead.labels(need_start, need_stop, window)
            owned = _owned_objects(labels, need_start, (core_start, core_stop))
            if stages is not None:
                stages["postprocess"] = stages.get("postprocess", 0.0) + seconds
            if need_stop == height or extra >= max_extra or not np.isin(labels[-1], owned).any():
                break
            extra += max(halo, 1)

        canvas = np.zeros((max(need_stop - core_start, carry.shape[0]), width), np.uint32)
        canvas[: carry.shape[0]] = carry
        if owned.size:
            part = labels[core_start - need_start :]
            target_rows = canvas[: part.shape[0]]
            free = target_rows == 0
            # Objects already painted by the band above keep their pixels; number only what shows.
            visible = np.intersect1d(np.unique(part[free]), owned)
            lookup = np.zeros(int(labels.max()) + 1, np.uint32)
            lookup[visible] = np.arange(next_label, next_label + visible.size, dtype=np.uint32)
            target_rows[free] = lookup[part[free]]
            next_label += int(visible.size)
        del labels
        rows = core_stop - core_start
        yield LabelBand(
            start=core_start,
            labels=canvas[:rows],
            maps=window[:, core_start - need_start : core_stop - need_start].copy() if keep_maps else None,
            n_objects=next_label - 1,
        )
        carry = canvas[rows:].copy()
        del canvas, window
        if not ahead.started:  # (once labelling runs ahead, its windows are views of the buffer: keep them valid)
            buffer.drop_before(core_stop - halo)  # the next band's window starts there
        core_start = core_stop


def _resized_rows(read_rows: Callable[[int, int], np.ndarray], shape: tuple[int, int], size: tuple[int, int]):
    """Rows of the image resized from ``shape`` to ``size``, each computed from the image rows around it.

    The values of the whole image's resize (:func:`segtool.pipeline.resize.resized_rows`, a block of columns at a time).
    """
    shrinking = size[0] < shape[0] or size[1] < shape[1]

    def read(start: int, stop: int) -> np.ndarray:
        first, last = span_source(shape[0], size[0], start, stop, shrinking=shrinking)
        piece = read_rows(first, last)
        return resized_rows(lambda a, b: piece[:, :, a:b], first, shape, size, (start, stop), shrinking=shrinking)

    return read


def _maps_at_image_size(stream, size: tuple[int, int], shape: tuple[int, int]):
    """Map rows streamed at the network's ``size`` (``(start, (C, rows, w))``), resized back to the image's ``shape``.

    An image row is yielded once every network row its resize reads has
    arrived. Only the network rows later image rows still read are kept (a
    copy of a few rows): neither the network's tile row nor a joined copy of
    it outlives its resize, which runs a block of columns at a time, so the
    network-scale buffers here stay one tile row while the next is computed.
    """
    shrinking = shape[0] < size[0] or shape[1] < size[1]
    tail, tail_start, done = None, 0, 0  # network rows tail_start.. not yet consumed (a copy), before this tile row
    for start, maps in stream:
        rows = min(maps.shape[1], size[0] - start)  # rows past the image are the tiles' padding
        if rows <= 0:
            continue
        maps = maps[:, :rows, : size[1]]

        def held(first: int, a: int = 0, b: int = size[1]) -> np.ndarray:
            """Network rows ``first:`` of the tail and this tile row, columns ``a:b``."""
            if tail is None or first >= start:
                return maps[:, first - start :, a:b]
            return np.concatenate([tail[:, first - tail_start :, a:b], maps[:, :, a:b]], axis=1)

        available = start + rows
        stop = done
        if available >= size[0]:
            stop = shape[0]
        else:
            while stop < shape[0] and span_source(size[0], shape[0], stop, stop + 1, shrinking=shrinking)[1] <= available:
                stop += 1
        resized = None
        if stop > done:
            first, _ = span_source(size[0], shape[0], done, stop, shrinking=shrinking)
            resized = resized_rows(partial(held, first), first, size, shape, (done, stop), shrinking=shrinking)
        keep = span_source(size[0], shape[0], stop, stop + 1, shrinking=shrinking)[0] if stop < shape[0] else available
        tail, tail_start = held(min(keep, available)).copy(), min(keep, available)
        del maps, held  # the tile row (and its views) is not kept while the network computes the next one
        if resized is not None:
            yield done, resized
            del resized
            done = stop


def _selecting(predictor: Callable[[np.ndarray], np.ndarray], channels: list[int]):
    """``predictor`` keeping only ``channels`` of its maps."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return predictor(batch)[:, channels]

    return predict


class _LookAhead:
    """Labels of band windows computed ahead on one extra thread, once all the maps are buffered."""

    def __init__(self, label: Callable[[np.ndarray], np.ndarray]) -> None:
        self._label = label
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[tuple[int, int], Future] = {}

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _timed(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        labels = self._label(rows)
        return labels, time.perf_counter() - started

    def start(self, buffer: _RowBuffer, windows: list[tuple[int, int]]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtool-bands")
        for start, stop in windows:
            self._futures[(start, stop)] = self._pool.submit(self._timed, buffer.rows(start, stop))

    def labels(self, start: int, stop: int, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """Labels of ``rows`` (image rows ``start:stop``) and the seconds they took: from the look-ahead, or computed here."""
        future = self._futures.pop((start, stop), None)
        if future is not None:
            return future.result()
        return self._timed(rows)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


class _RowBuffer:
    """Consecutive rows of (C, rows, W) maps in one preallocated array, dropped from the top."""

    def __init__(self, channels: int, width: int, *, capacity: int) -> None:
        self._data = np.empty((channels, max(1, capacity), width), np.float32)
        self.start = 0  # image row of self._data[:, 0]
        self.count = 0

    @property
    def stop(self) -> int:
        return self.start + self.count

    def append(self, start: int, block: np.ndarray) -> None:
        if start != self.stop:
            raise RuntimeError(f"rows must arrive in order: expected row {self.stop}, got {start}")
        rows = block.shape[1]
        if self.count + rows > self._data.shape[1]:
            grown = np.empty((self._data.shape[0], self.count + rows, self._data.shape[2]), np.float32)
            grown[:, : self.count] = self._data[:, : self.count]
            self._data = grown
        self._data[:, self.count : self.count + rows] = block
        self.count += rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        """A view of image rows ``start:stop`` (valid until the next append or drop)."""
        if start < self.start or stop > self.stop:
            raise RuntimeError(f"rows {start}:{stop} are not buffered ({self.start}:{self.stop})")
        return self._data[:, start - self.start : stop - self.start]

    def drop_before(self, row: int) -> None:
        drop = min(max(0, row - self.start), self.count)
        if drop:
            keep = self.count - drop
            self._data[:, :keep] = self._data[:, drop : self.count]
            self.start += drop
            self.count = keep
