"""A model's side of the band schedules: its predictor, labelling and tile plan handed to ``pipeline``.

:mod:`segtool.pipeline.bands` labels an image band by band and
:mod:`segtool.pipeline.bigimage` streams it from and to files; both know the
network only through the callables built here:

- :func:`predict_label_bands`: finished label rows of an image given as a row
  reader (the maps are the in-memory path's, since the tile grid is the whole image's);
- :func:`label_by_tile_rows`: an image in memory labelled tile row by tile row
  beside the network, numbered as the whole image;
- :func:`predict_file_in_bands`: a large image read lazily, written as tiled BigTIFF.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from segtool.infer.predict import estimate_from_sample, scaled_objects
from segtool.infer.instances import LABEL_CHANNELS, maps_to_labels, number_as_whole
from segtool.infer.network import make_predictor, network_device_type, network_precision, prepared_net
from segtool.memory import return_freed_memory_promptly
from segtool.pipeline.bands import BandNetwork, LabelBand, label_rows_in_bands
from segtool.pipeline.bigimage import BandModel, write_labels_in_bands
from segtool.pipeline.options import BAND_TILE_MEMORY, SEAM_HALO, ObjectOptions, TileOptions, check_common
from segtool.pipeline.tiling import TileCallback

__all__ = ["label_by_tile_rows", "predict_file_in_bands", "predict_label_bands"]


def predict_label_bands(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    model,
    *,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    band_rows: int = 1024,
    halo: int = SEAM_HALO,
    keep_maps: bool = False,
    on_tile: TileCallback | None = None,
    stages: dict[str, float] | None = None,
    memory: int | None = None,
) -> Iterator[LabelBand]:
    """Predict a large image in horizontal bands, yielding finished label rows.

    The network maps come from :func:`segtool.pipeline.tiling.predict_tiled_rows`
    on the whole image's tile grid, so they are identical to the in-memory
    path's (with ``memory`` None: the same tile plan). Post-processing runs on each band of ``band_rows`` rows plus
    ``halo`` rows above and below; an object belongs to the band that holds
    its top row and is painted whole (it may reach into the next band's rows),
    so an object crossing a band edge stays one object. When an object reaches
    the bottom of its band's window the window grows by ``halo`` rows, up to
    three times, so objects up to ``4 * halo`` rows tall are never cut. Only
    a few bands' worth of maps and labels are in memory at any time
    (:func:`segtool.pipeline.bands.label_rows_in_bands`).

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
        As in :func:`segtool.infer.predict.predict_image`; ``tiling.scale``
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
    memory : int, optional
        Network tile budget in bytes instead of the device's default
        (:func:`segtool.pipeline.options.budget_tile`); ``predict_file_in_bands``
        passes :data:`segtool.pipeline.options.BAND_TILE_MEMORY`.

    Yields
    ------
    LabelBand
        Consecutive bands covering all rows; ``labels`` are uint32.
    """
    config = model.config
    scale = 1.0 if tiling.scale is None else float(tiling.scale)
    check_common(model, tiling.overlap, tiling.batch_size, scale)
    height, width = (int(n) for n in shape)
    options = scaled_objects(objects, config, scale)
    net = prepared_net(model)
    # The tile grid of the image as the network sees it, resized by ``scale``.
    size = (height, width) if scale == 1.0 else (max(1, round(height * scale)), max(1, round(width * scale)))
    plan = tiling.plan(config, size, device_type=network_device_type(net), precision=network_precision(net),
                       memory=memory)
    network = BandNetwork(
        predictor=make_predictor(net, config.target, tta=tiling.tta),
        label=lambda rows, label_channels_only=False: maps_to_labels(
            rows, target=config.target, label_channels_only=label_channels_only, **options),
        plan=plan,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        scale=scale,
        label_channels=LABEL_CHANNELS[config.target],
    )
    yield from label_rows_in_bands(read_rows, (height, width), network, band_rows=band_rows, halo=halo,
                                   keep_maps=keep_maps, on_tile=on_tile, stages=stages)


def label_by_tile_rows(
    normalized: np.ndarray,
    model,
    *,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    halo: int = SEAM_HALO,
    stages: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """An image in memory labelled tile row by tile row while the network works on the next row.

    The in-memory schedule runs the network over all tiles, then labels the
    whole image; here :func:`predict_label_bands` labels each finished tile
    row (bands of one tile row's core, ``halo`` rows of context) on this
    thread while the network computes the next one, and
    :func:`segtool.infer.instances.number_as_whole` gives the objects the
    numbers the whole-image labelling would: the label image is the same.

    Parameters
    ----------
    normalized : (C, H, W) ndarray of float32
        From :func:`segtool.infer.predict.normalize_for_model` (not rescaled).
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


def predict_file_in_bands(
    source,
    model,
    labels_path: str | os.PathLike,
    *,
    prob_path: str | os.PathLike | None = None,
    overlay_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    band_rows: int | None = None,
    halo: int = SEAM_HALO,
    on_tile: Callable[[int, int], None] | None = None,
    size=None,
) -> dict[str, Any]:
    """Segment a large image band by band and write its labels as a tiled BigTIFF.

    :func:`segtool.pipeline.bigimage.write_labels_in_bands` with this model's
    sizes, percentiles and :func:`predict_label_bands`. Unless ``tiling``
    names a tile, the halo tiles are planned under
    :data:`segtool.pipeline.options.BAND_TILE_MEMORY` (smaller than in
    memory, so 8192^2 stays under 1.5 GiB): their cores still match
    whole-image inference, so the labels equal the in-memory run's up to
    rounding (BENCHMARKS.md, "Memory").

    Parameters
    ----------
    source : LazyImage or (H, W) ndarray
        The image; a :class:`segtool.pipeline.read.LazyImage` is read a band at a time.
    model : LoadedModel
    labels_path : path-like
        Where the labels go (uint16, or uint32 above 65535 objects; tiled
        512x512, zlib, BigTIFF).
    prob_path, overlay_path : path-like, optional
        Also write the float32 maps, or outlines over the image as PNG (see
        :func:`segtool.pipeline.bigimage.write_labels_in_bands`).
    overwrite : bool, optional
    tiling, objects : TileOptions, ObjectOptions, optional
        As in :func:`segtool.infer.predict.predict_image`: ``tiling.scale``
        None estimates the objects' size once, from a sample of the image
        (:func:`segtool.infer.predict.estimate_from_sample`), unless ``size``
        is given.
    band_rows : int, optional
        Rows per band; default from :func:`segtool.pipeline.bigimage.default_band_rows`.
    halo : int, optional
        Context rows above and below each band (see :func:`predict_label_bands`).
    on_tile : callable, optional
        ``on_tile(done, total)``.
    size : SizeEstimate, optional
        The object size, already estimated (its scale is used).

    Returns
    -------
    figures : dict
        As :func:`segtool.pipeline.bigimage.write_labels_in_bands` (with
        ``scale`` and ``size``).

    Raises
    ------
    InputError, ModelError, OutputError
    """
    config = model.config
    # Bounded memory is this schedule's purpose: freed tile and band buffers go back to the OS at once (a
    # process-wide malloc setting; see its docstring for the cost).
    return_freed_memory_promptly()

    def count_tiles(shape: tuple[int, int]) -> int:
        return tiling.plan(config, shape, device_type=network_device_type(model.net), memory=BAND_TILE_MEMORY,
                           precision=network_precision(model.net)).n_tiles

    def label_bands(read_rows, shape, *, scale: float, **kwargs) -> Iterator[LabelBand]:
        return predict_label_bands(read_rows, shape, model, tiling=replace(tiling, scale=scale), objects=objects,
                                   memory=BAND_TILE_MEMORY, **kwargs)

    def choose_scale(sample, shape, percentiles):
        if size is not None:
            return size.scale, size
        if tiling.scale is not None:
            return float(tiling.scale), None
        estimate = estimate_from_sample(sample, shape, model, percentiles=percentiles, objects=objects)
        return (estimate.scale if estimate is not None else 1.0), estimate

    network = BandModel(in_channels=config.in_channels, out_channels=config.out_channels,
                        percentiles=(config.norm_low, config.norm_high), count_tiles=count_tiles,
                        label_bands=label_bands, choose_scale=choose_scale)
    return write_labels_in_bands(source, network, labels_path, prob_path=prob_path, overlay_path=overlay_path,
                                 overwrite=overwrite, band_rows=band_rows, halo=halo, on_tile=on_tile)
