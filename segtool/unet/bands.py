"""Post-processing an image too large for memory, band by band.

:func:`predict_label_bands` takes the blended network maps as
:func:`segtool.unet.tiling.predict_tiled_rows` streams them (the very same
maps the in-memory path computes, since the tile grid is the whole image's)
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
file side (lazy reading, tiled BigTIFF writing) is in
:mod:`segtool.unet.bigimage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from segtool.errors import InputError, ModelError
from segtool.pipeline.stream import prefetch
from segtool.unet.instances import maps_to_labels
from segtool.pipeline.options import ObjectOptions, TileOptions, check_common
from segtool.pipeline.resize import resized_span, span_source
from segtool.unet.inference import make_predictor, network_device_type, network_precision, prepared_net
from segtool.unet.predict import scaled_objects, timed_predictor
from segtool.unet.tiling import (
    TileCallback,
    pad_mode,
    predict_tiled_rows,
    reflect_rows,
)

__all__ = ["LabelBand", "label_by_tile_rows", "predict_label_bands"]


@dataclass
class LabelBand:
    """Finished rows from :func:`predict_label_bands`.

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


def predict_label_bands(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    model,
    *,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    band_rows: int = 1024,
    halo: int = 128,
    keep_maps: bool = False,
    on_tile: TileCallback | None = None,
    stages: dict[str, float] | None = None,
) -> Iterator[LabelBand]:
    """Predict a large image in horizontal bands, yielding finished label rows.

    The network maps come from :func:`segtool.unet.tiling.predict_tiled_rows`
    on the whole image's tile grid, so they are identical to the in-memory
    path's. Post-processing runs on each band of ``band_rows`` rows plus
    ``halo`` rows above and below; an object belongs to the band that holds
    its top row and is painted whole (it may reach into the next band's rows),
    so an object crossing a band edge stays one object. When an object reaches
    the bottom of its band's window the window grows by ``halo`` rows, up to
    three times, so objects up to ``4 * halo`` rows tall are never cut. Only
    a few bands' worth of maps and labels are in memory at any time.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(start, stop)`` returns rows ``start:stop`` of the image,
        already normalised, as ``(C_in, stop - start, W)`` float32 (or
        ``(rows, W)`` for one channel).
    shape : (H, W)
        Image size.
    model : LoadedModel
    tiling, objects : TileOptions, ObjectOptions, optional
        As in :func:`segtool.unet.predict.predict_image`; ``tiling.scale``
        resizes the rows before the network and the maps back (the whole
        image's resize, row by row), None counts as 1.
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
        Receives seconds per stage: ``network`` (the network calls),
        ``postprocess`` (labelling the bands); the network runs on a thread of
        its own, one tile row ahead of the post-processing, so the two add up
        to more than the wall time.

    Yields
    ------
    LabelBand
        Consecutive bands covering all rows; ``labels`` are uint32.
    """
    config = model.config
    scale = 1.0 if tiling.scale is None else float(tiling.scale)
    check_common(model, tiling.overlap, tiling.batch_size, scale)
    if int(band_rows) < 1 or int(halo) < 0:
        raise InputError(f"band_rows must be >= 1 and halo >= 0, got {band_rows} and {halo}")
    band_rows, halo = int(band_rows), int(halo)
    height, width = (int(n) for n in shape)
    options = scaled_objects(objects, config, scale)
    net = prepared_net(model)
    # The network sees the image resized by ``scale`` (rows resized as they are read); its maps are resized back.
    size_h, size_w = (max(1, round(n * scale)) for n in (height, width)) if scale != 1.0 else (height, width)
    plan = tiling.plan(config, (size_h, size_w), device_type=network_device_type(net),
                       precision=network_precision(net))
    tile_hw = plan.tile
    # The grid the tiles cover: the image padded (by reflection, as the in-memory path pads) to the tile size,
    # or, for halo tiles, to a multiple of 2**depth.
    if plan.tile_halo is None:
        padded_h, padded_w = max(size_h, tile_hw[0]), max(size_w, tile_hw[1])
    else:
        padded_h, padded_w = (plan.align * -(-n // plan.align) for n in (size_h, size_w))
    mode = pad_mode((size_h, size_w))

    def image_rows(start: int, stop: int) -> np.ndarray:
        block = np.asarray(read_rows(start, stop), dtype=np.float32)
        if block.ndim == 2:
            block = block[np.newaxis]
        if block.shape[0] != config.in_channels:
            raise ModelError(f"model expects {config.in_channels} input channels, the image has {block.shape[0]}")
        return block

    network_rows = image_rows if scale == 1.0 else _resized_rows(image_rows, (height, width), (size_h, size_w))

    def padded_rows(start: int, stop: int) -> np.ndarray:
        block = network_rows(start, stop)
        if padded_w > size_w:
            block = np.pad(block, [(0, 0), (0, 0), (0, padded_w - size_w)], mode=mode)
        return block

    source = reflect_rows(padded_rows, size_h, padded_h, mode=mode)
    predictor = timed_predictor(make_predictor(net, config.target, tta=tiling.tta), stages)
    stream = predict_tiled_rows(
        source,
        (padded_h, padded_w),
        predictor,
        out_channels=config.out_channels,
        on_tile=on_tile,
        **plan.tiling_options(),
    )
    if scale != 1.0:
        stream = _maps_at_image_size(stream, (size_h, size_w), (height, width))

    buffer = _RowBuffer(config.out_channels, width, capacity=band_rows + 2 * halo + int(tile_hw[0] / scale) + 8)
    max_extra = 3 * halo
    # The network fills the next rows while this thread labels the current band.
    for_rows = prefetch(stream, depth=1)
    ahead = _LookAhead(lambda rows: maps_to_labels(rows, target=config.target, **options))
    try:
        yield from _label_bands(for_rows, buffer, ahead, height, width, band_rows, halo, max_extra, keep_maps, stages)
    finally:
        ahead.close()
        for_rows.close()


def label_by_tile_rows(
    normalized: np.ndarray,
    model,
    *,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    halo: int = 128,
    stages: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """An image in memory labelled tile row by tile row while the network works on the next row.

    The in-memory schedule runs the network over all tiles, then labels the
    whole image; here :func:`predict_label_bands` labels each finished tile
    row (bands of one tile row's core, ``halo`` rows of context) on this
    thread while the network computes the next one, and
    :func:`segtool.unet.instances.number_as_whole` gives the objects the
    numbers the whole-image labelling would: the label image is the same.

    Parameters
    ----------
    normalized : (C, H, W) ndarray of float32
        From :func:`segtool.unet.predict.normalize_for_model` (not rescaled).
    model : LoadedModel
    tiling, objects : TileOptions, ObjectOptions, optional
    halo : int, optional
        Rows of context above and below each band (as :func:`predict_label_bands`).
    stages : dict, optional
        Seconds per stage, as :func:`predict_label_bands`.

    Returns
    -------
    (labels, maps, n_tiles) or None
        uint16 (uint32 above 65535 objects) labels, the (C_out, H, W) maps
        and the tile count; None when the image fits in one tile row, or the
        options split seeds by shape (``split_height``), where labelling the
        whole image after the network is as fast or the only way.
    """
    config = model.config
    options = objects.resolve(config)
    if options.get("split_height") is not None:
        return None
    height, width = normalized.shape[1:]
    net = prepared_net(model)
    plan = tiling.plan(config, (height, width), device_type=network_device_type(net), precision=network_precision(net))
    if plan.tile_halo is not None:
        core = plan.tile[0] - 2 * plan.tile_halo
    else:
        core = max(1, int(plan.tile[0] * (1 - plan.overlap)))
    if height <= plan.tile[0] or core < 1:
        return None
    from segtool.unet.instances import number_as_whole

    labels = np.zeros((height, width), np.uint32)
    maps = np.empty((config.out_channels, height, width), np.float32)
    for band in predict_label_bands(lambda start, stop: normalized[:, start:stop], (height, width), model,
                                    tiling=tiling, objects=objects, band_rows=core, halo=halo, keep_maps=True,
                                    stages=stages):
        rows = band.labels.shape[0]
        labels[band.start : band.start + rows] = band.labels
        maps[:, band.start : band.start + rows] = band.maps
    started = time.perf_counter()
    labels = number_as_whole(labels, maps, target=config.target, **options)
    if stages is not None:
        stages["postprocess"] = stages.get("postprocess", 0.0) + time.perf_counter() - started
    return labels, maps, plan.n_tiles


def _label_bands(for_rows, buffer, ahead, height, width, band_rows, halo, max_extra, keep_maps, stages):
    """The band loop of :func:`predict_label_bands`: label, keep the owned objects, number and yield."""
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

    The values of the whole image's resize (:func:`segtool.pipeline.resize.resized_span`).
    """
    shrinking = size[0] < shape[0] or size[1] < shape[1]

    def read(start: int, stop: int) -> np.ndarray:
        first, last = span_source(shape[0], size[0], start, stop, shrinking=shrinking)
        return resized_span(read_rows(first, last), (first, 0), shape, size, (start, 0), (stop, size[1]),
                            shrinking=shrinking)

    return read


def _maps_at_image_size(stream, size: tuple[int, int], shape: tuple[int, int]):
    """Map rows streamed at the network's ``size`` (``(start, (C, rows, w))``), resized back to the image's ``shape``.

    An image row is yielded once every network row its resize reads has
    arrived; network rows no later image row reads are dropped.
    """
    shrinking = shape[0] < size[0] or shape[1] < size[1]
    held, held_start, done = None, 0, 0
    for start, maps in stream:
        rows = min(maps.shape[1], size[0] - start)  # rows past the image are the tiles' padding
        if rows <= 0:
            continue
        maps = maps[:, :rows, : size[1]]
        held = maps if held is None else np.concatenate([held, maps], axis=1)
        available = start + rows
        stop = done
        if available >= size[0]:
            stop = shape[0]
        else:
            while stop < shape[0] and span_source(size[0], shape[0], stop, stop + 1, shrinking=shrinking)[1] <= available:
                stop += 1
        if stop > done:
            first, _ = span_source(size[0], shape[0], done, stop, shrinking=shrinking)
            yield done, resized_span(held[:, first - held_start :], (first, 0), size, shape, (done, 0), (stop, shape[1]),
                                     shrinking=shrinking)
            done = stop
            if done < shape[0]:
                keep = span_source(size[0], shape[0], done, done + 1, shrinking=shrinking)[0]
                held, held_start = held[:, keep - held_start :], keep


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
