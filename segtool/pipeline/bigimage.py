"""Images too large for memory: read rows lazily, predict in bands, write tiled BigTIFF.

The file side of :func:`segtool.pipeline.bands.label_rows_in_bands`; the model is known here only as a
:class:`BandModel` (sizes, percentiles and callables), which :func:`segtool.infer.bands.predict_file_in_bands`
builds:

- :func:`segtool.pipeline.read.open_lazy` opens a single-plane TIFF without decoding it and reads
  rows on demand: a memory map for uncompressed contiguous data, otherwise
  only the strips or tiles that hold the requested rows.
- :func:`segtool.pipeline.percentiles.stream_percentiles` computes the
  normalisation percentiles with one pass over the rows.
- :func:`write_labels_in_bands` runs the band schedule and streams finished
  label rows (and, on request, probability rows) to temporary raw files next
  to the output, then writes them as tiled, zlib-compressed BigTIFF, tile by
  tile. Neither the full label image nor the full float maps are ever in
  memory.

Readers raise :class:`segtool.errors.InputError`, like :mod:`segtool.io`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, OutputError, first_line
from segtool.labels import label_dtype as stored_label_dtype
from segtool.normalize import map_to_unit
from segtool.pipeline.bands import LabelBand
from segtool.pipeline.options import SEAM_HALO
from segtool.pipeline.percentiles import stream_percentiles
from segtool.pipeline.read import LazyImage
from segtool.pipeline.write import OUTPUT_TILE, RowSpool, row_tiles, write_tiled_tiff

__all__ = [
    "BandModel",
    "default_band_rows",
    "write_labels_in_bands",
]

#: Pixels per post-processing window (band plus halos) the default band height aims at. The labelling of a
#: window (the watershed's float64 copies; two windows at once at the end) and the row buffer grow with it:
#: 16 Mpixel windows held about 0.45 GiB more of the 8192^2 peak RSS than 4 Mpixel ones (BENCHMARKS.md, "Memory").
WINDOW_PIXELS = 4 * 2**20
#: Longest side of the overlay PNG written for a banded image (it is downsampled to fit).
OVERLAY_MAX_SIDE = 4096


def default_band_rows(width: int, *, halo: int = SEAM_HALO, window_pixels: int = WINDOW_PIXELS) -> int:
    """Band height (a multiple of 256 rows, at least 256) so a band plus halos holds ~``window_pixels``.

    Examples
    --------
    >>> default_band_rows(20000), default_band_rows(4096)
    (256, 768)
    """
    rows = window_pixels // max(int(width), 1) - 2 * int(halo)
    return max(256, (rows // 256) * 256)


@dataclass(frozen=True)
class BandModel:
    """What :func:`write_labels_in_bands` needs of a model, with no network code.

    Attributes
    ----------
    in_channels, out_channels : int
        Channels the network reads and the maps it writes.
    percentiles : (float, float)
        The normalisation percentiles (the model's ``norm_low``, ``norm_high``).
    count_tiles : callable
        ``count_tiles((H, W))``: the network tiles of an image that size, as
        the network sees it (reported in the figures).
    label_bands : callable
        ``label_bands(read_rows, (H, W), *, scale, band_rows, halo, keep_maps, on_tile, stages)`` yields
        :class:`segtool.pipeline.bands.LabelBand` (as :func:`segtool.pipeline.bands.label_rows_in_bands`),
        the network seeing the image resized by ``scale``.
    choose_scale : callable
        ``choose_scale(sample, (H, W), (low, high))`` -> ``(scale, size)``:
        the factor the image is resized by before the network, and the size
        estimate it came from (or None when the scale was given).
        ``sample(rows, cols, step)`` reads the raw image's ``rows, cols``
        slices every ``step`` pixels; ``low, high`` are its normalisation
        percentiles.
    """

    in_channels: int
    out_channels: int
    percentiles: tuple[float, float]
    count_tiles: Callable[[tuple[int, int]], int]
    label_bands: Callable[..., Iterator[LabelBand]]
    choose_scale: Callable[..., tuple[float, Any]]


def write_labels_in_bands(
    source,
    network: BandModel,
    labels_path: str | os.PathLike,
    *,
    prob_path: str | os.PathLike | None = None,
    overlay_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    band_rows: int | None = None,
    halo: int = SEAM_HALO,
    on_tile: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Segment a large image band by band and write its labels as a tiled BigTIFF.

    Parameters
    ----------
    source : LazyImage or (H, W) ndarray
        The image; a :class:`segtool.pipeline.read.LazyImage` is read a band at a time.
    network : BandModel
    labels_path : path-like
        Where the labels go (uint16, or uint32 above 65535 objects; tiled
        512x512, zlib, BigTIFF).
    prob_path : path-like, optional
        Also write the float32 maps, ``(C, H, W)``, same layout.
    overlay_path : path-like, optional
        Also write outlines over the image as PNG, downsampled so its longer
        side is at most 4096 pixels.
    overwrite : bool, optional
    band_rows : int, optional
        Rows per band; default from :func:`default_band_rows`.
    halo : int, optional
        Context rows above and below each band (see
        :func:`segtool.pipeline.bands.label_rows_in_bands`).
    on_tile : callable, optional
        ``on_tile(done, total)``.

    Returns
    -------
    figures : dict
        ``objects``, ``tiles``, ``bands``, ``shape``, ``dtype``, ``scale``,
        ``size`` (the size estimate, or None when none was made),
        ``overlay_step`` (downsampling of the overlay, if written),
        ``seconds``, ``stage_seconds`` (``network``, ``postprocess``,
        ``write``; the network overlaps the other two).

    Raises
    ------
    InputError, ModelError, OutputError
    """
    from segtool.io import check_output_free

    start_time = time.perf_counter()
    labels_path = Path(labels_path)
    prob_path = Path(prob_path) if prob_path is not None else None
    overlay_path = Path(overlay_path) if overlay_path is not None else None
    for path in (labels_path, prob_path, overlay_path):
        if path is not None:
            check_output_free(path, overwrite=overwrite)
    if network.in_channels != 1:
        from segtool.errors import ModelError

        raise ModelError(f"model expects {network.in_channels} input channels, the image has 1")

    if isinstance(source, LazyImage):
        height, width = source.shape
        raw_rows, dtype = source.read_rows, source.dtype
        pixel_size, unit = source.pixel_size, source.unit
    else:
        array = np.asarray(source)
        if array.ndim != 2:
            raise InputError(f"image must be 2-D (Y, X), got shape {array.shape}")
        height, width = array.shape

        def raw_rows(start: int, stop: int) -> np.ndarray:
            return array[start:stop]

        dtype = array.dtype
        pixel_size, unit = None, None
    read_start = time.perf_counter()
    low, high = stream_percentiles(raw_rows, (height, width), dtype, list(network.percentiles))
    read_seconds = time.perf_counter() - read_start

    def normalized_rows(start: int, stop: int) -> np.ndarray:
        block = np.asarray(raw_rows(start, stop), dtype=np.float32)
        if not np.isfinite(block).all():
            raise InputError("image contains NaN or infinite values")
        return map_to_unit(block, low, high)

    def sample(rows: slice, cols: slice, step: int) -> np.ndarray:
        return _read_strided(raw_rows, rows, cols, step)

    started = time.perf_counter()
    scale, size = network.choose_scale(sample, (height, width), (low, high))
    read_seconds += time.perf_counter() - started
    if band_rows is None:
        band_rows = default_band_rows(width, halo=halo)
    network_shape = (height, width) if scale == 1.0 else (max(1, round(height * scale)), max(1, round(width * scale)))
    n_tiles = network.count_tiles(network_shape)
    folder = labels_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{folder}: cannot create output folder: {err.strerror or err}") from err

    with ExitStack() as stack:
        try:
            label_spool = RowSpool(folder, width, np.uint32)
        except OSError as err:
            raise OutputError(f"{folder}: cannot write temporary files: {err.strerror or err}") from err
        stack.callback(label_spool.close)
        prob_spool = None
        if prob_path is not None:
            prob_spool = RowSpool(prob_path.parent, width, np.float32)
            stack.callback(prob_spool.close)
        bands: list[tuple[int, int]] = []
        n_objects = 0
        stages: dict[str, float] = {"percentiles": read_seconds}
        try:
            for band in network.label_bands(
                normalized_rows,
                (height, width),
                scale=scale,
                band_rows=band_rows,
                halo=halo,
                keep_maps=prob_spool is not None,
                on_tile=on_tile,
                stages=stages,
            ):
                started = time.perf_counter()
                label_spool.append(band.labels)
                if prob_spool is not None:
                    prob_spool.append(band.maps)
                stages["write"] = stages.get("write", 0.0) + time.perf_counter() - started
                bands.append((band.start, band.labels.shape[0]))
                n_objects = band.n_objects
        except OSError as err:
            raise OutputError(f"{folder}: cannot write temporary files: {err.strerror or first_line(err)}") from err

        label_dtype = stored_label_dtype(n_objects)
        write_start = time.perf_counter()
        label_tiles = (tile.astype(label_dtype, copy=False) for tile in row_tiles(label_spool.blocks(OUTPUT_TILE[0])))
        write_tiled_tiff(labels_path, label_tiles, (height, width), label_dtype, pixel_size=pixel_size, unit=unit,
                         overwrite=overwrite)
        figures: dict[str, Any] = {
            "objects": int(n_objects),
            "tiles": n_tiles,
            "bands": len(bands),
            "shape": [height, width],
            "dtype": np.dtype(label_dtype).name,
            "scale": scale,
            "size": size,
        }
        if prob_spool is not None:
            plane_tiles = (tile for channel in range(network.out_channels)
                           for tile in row_tiles(prob_spool.blocks(OUTPUT_TILE[0], plane=channel)))
            write_tiled_tiff(prob_path, plane_tiles, (network.out_channels, height, width), np.float32,
                             pixel_size=pixel_size, unit=unit, overwrite=overwrite)
        if overlay_path is not None:
            figures["overlay_step"] = _write_overlay(overlay_path, raw_rows, label_spool, height, width, overwrite)
        stages["write"] = stages.get("write", 0.0) + time.perf_counter() - write_start
    figures["seconds"] = round(time.perf_counter() - start_time, 3)
    figures["stage_seconds"] = {k: round(v, 3) for k, v in stages.items()}
    return figures


def _write_overlay(path: Path, raw_rows, spool: RowSpool, height: int, width: int, overwrite: bool) -> int:
    """Outlines on a downsampled copy of the image; returns the downsampling step."""
    from segtool.io import write_png
    from segtool.overlay import outline_overlay

    step = max(1, math.ceil(max(height, width) / OVERLAY_MAX_SIDE))
    whole = (slice(0, height), slice(0, width))
    image = _read_strided(raw_rows, *whole, step).astype(np.float32)
    labels = _read_strided(spool.read, *whole, step)
    write_png(path, outline_overlay(image, labels), overwrite=overwrite)
    return step


def _read_strided(read_rows: Callable[[int, int], np.ndarray], rows: slice, cols: slice, step: int) -> np.ndarray:
    """Every ``step``-th row and column of ``rows, cols``, read a band of rows at a time (never the whole image)."""
    chunk = step * max(1, 4096 // step)
    parts = [np.asarray(read_rows(top, min(rows.stop, top + chunk)))[::step, cols][:, ::step]
             for top in range(rows.start, rows.stop, chunk)]
    return np.concatenate(parts)
