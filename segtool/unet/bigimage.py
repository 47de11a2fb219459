"""Images too large for memory: read rows lazily, predict in bands, write tiled BigTIFF.

The file side of :func:`segtool.unet.predict.predict_label_bands`:

- :func:`open_lazy` opens a single-plane TIFF without decoding it and reads
  rows on demand: a memory map for uncompressed contiguous data, otherwise
  only the strips or tiles that hold the requested rows.
- :func:`lazy_percentiles` computes the normalisation percentiles with one
  pass over the rows (exact for 8- and 16-bit images, from a histogram; from
  a regular subsample otherwise).
- :func:`predict_file_in_bands` runs the band predictor and streams finished
  label rows (and, on request, probability rows) to temporary raw files next
  to the output, then writes them as tiled, zlib-compressed BigTIFF, tile by
  tile. Neither the full label image nor the full float maps are ever in
  memory.

Readers raise :class:`segtool.errors.InputError`, like :mod:`segtool.io`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, OutputError, first_line

__all__ = [
    "LazyImage",
    "default_band_rows",
    "lazy_percentiles",
    "open_lazy",
    "predict_file_in_bands",
]

#: Pixels per post-processing window (band plus halos) the default band height aims at.
WINDOW_PIXELS = 16 * 2**20
#: Tile size of the written TIFFs (as :func:`segtool.io.write_labels` uses for large images).
OUTPUT_TILE = (512, 512)
#: Longest side of the overlay PNG written for a banded image (it is downsampled to fit).
OVERLAY_MAX_SIDE = 4096


class LazyImage:
    """A 2-D image in a TIFF file, read a few rows at a time.

    Use :func:`open_lazy` to make one; close it (or use ``with``) when done.

    Attributes
    ----------
    path : Path
    shape : (int, int)
        (H, W) of the plane.
    dtype : numpy.dtype
        dtype of the rows :meth:`read_rows` returns (float32 when RGB is averaged).
    pixel_size : (float, float) or None
    unit : str or None
    """

    def __init__(self, path: Path, tif, page, *, channel: int | None, samples: int, memmap) -> None:
        self.path = path
        self._tif = tif
        self._page = page
        self._channel = channel
        self._samples = samples
        self._memmap = memmap
        self._cache: dict[int, np.ndarray] = {}
        self.shape = (int(page.imagelength), int(page.imagewidth))
        averaged = samples > 1 and channel is None
        self.dtype = np.dtype(np.float32) if averaged else np.dtype(page.dtype)
        self.pixel_size, self.unit = _calibration(tif, page)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.shape[0] * self.shape[1]

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file (and the memory map)."""
        self._memmap = None
        self._cache.clear()
        self._tif.close()

    def _reduce(self, data: np.ndarray) -> np.ndarray:
        """(rows, W[, S]) -> (rows, W) following the channel rule of :func:`segtool.io.read_image`."""
        if self._samples == 1:
            return data.reshape(data.shape[0], data.shape[1])
        if self._channel is not None:
            return data[..., self._channel]
        return data[..., :3].astype(np.float32).mean(axis=-1)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new (rows, W) array.

        Raises
        ------
        InputError
            If the file cannot be decoded (corrupt or truncated).
        """
        height, width = self.shape
        start, stop = max(0, int(start)), min(height, int(stop))
        if stop <= start:
            return np.zeros((0, width), self.dtype)
        if self._memmap is not None:
            try:
                return np.array(self._reduce(self._memmap[start:stop]), dtype=self.dtype)
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read TIFF rows {start}:{stop}: {first_line(err)}") from err
        rows_per_segment = int(self._page.chunks[0])
        out = np.empty((stop - start, width), self.dtype)
        first, last = start // rows_per_segment, (stop - 1) // rows_per_segment
        for segment_row in range(first, last + 1):
            block = self._segment_row(segment_row)
            top = segment_row * rows_per_segment
            lo, hi = max(start, top), min(stop, top + block.shape[0])
            out[lo - start : hi - start] = block[lo - top : hi - top]
        # Keep only the last segment row: the next read (overlapping tiles) usually starts there.
        for key in [k for k in self._cache if k != last]:
            del self._cache[key]
        return out

    def _segment_row(self, index: int) -> np.ndarray:
        """Decode one row of strips/tiles into (rows, W), reduced to one channel."""
        if index in self._cache:
            return self._cache[index]
        page = self._page
        height, width = self.shape
        seg_h, seg_w = (int(n) for n in page.chunks[:2])
        per_row = int(page.chunked[1]) if len(page.chunked) > 1 else 1
        rows = min(seg_h, height - index * seg_h)
        block = np.zeros((rows, width, self._samples), page.dtype)
        fh = self._tif.filehandle
        decodeargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
        if page.compression in (6, 7, 34892, 33007):
            decodeargs["jpegtables"] = page.jpegtables
            decodeargs["jpegheader"] = page.jpegheader
        try:
            for column in range(per_row):
                segment = index * per_row + column
                offset, count = page.dataoffsets[segment], page.databytecounts[segment]
                if count:
                    fh.seek(offset)
                    data = fh.read(count)
                else:
                    data = None
                decoded, position, _ = page.decode(data, segment, **decodeargs)
                if decoded is None:
                    continue
                decoded = decoded.reshape(decoded.shape[-3:])  # (h, w, samples)
                x0 = int(position[3])
                w = min(decoded.shape[1], width - x0)
                block[:, x0 : x0 + w] = decoded[:rows, :w]
        except InputError:
            raise
        except Exception as err:  # tifffile/imagecodecs raise many types on corrupt data
            raise InputError(f"cannot decode TIFF rows near {index * seg_h}: {first_line(err)}") from err
        reduced = np.ascontiguousarray(self._reduce(block), dtype=self.dtype)
        self._cache[index] = reduced
        return reduced


def _calibration(tif, page) -> tuple[tuple[float, float] | None, str | None]:
    try:
        from segtool.io import tiff_calibration

        return tiff_calibration(tif, page)
    except Exception:  # calibration is a nicety; never fail a read for it
        return None, None


def open_lazy(path: str | os.PathLike, *, channel: int | None = None) -> LazyImage | None:
    """Open a TIFF for row-by-row reading, or return None if it cannot be read that way.

    Single-page grayscale (Y, X) TIFFs and interleaved multi-sample (Y, X, S)
    TIFFs (RGB, or channels in one page) are supported; other files (PNG,
    stacks, planar channels, OME series of several pages) return None, and
    the caller reads them whole with :func:`segtool.io.read_image`.

    Parameters
    ----------
    path : path-like
    channel : int, optional
        Channel of a multi-sample image, with the rule of
        :func:`segtool.io.read_image` (RGB(A) is averaged without it).

    Returns
    -------
    LazyImage or None

    Raises
    ------
    InputError
        If the file is missing, not a readable TIFF, or the channel choice is
        invalid for it.
    """
    import tifffile

    from segtool.io import check_readable_file

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    check_readable_file(path)  # the same messages as read_image for missing, empty or unreadable files
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise InputError(f"cannot read TIFF (corrupt or truncated?): {first_line(err)}") from err
    try:
        series = tif.series[0] if tif.series else None
        if series is None or len(series.pages) != 1 or series.pages[0] is None:
            tif.close()
            return None
        page = series.pages[0]
        page = page.keyframe if hasattr(page, "keyframe") and page.keyframe is not None else page
        samples = int(page.samplesperpixel)
        if int(getattr(page, "imagedepth", 1)) != 1 or (samples > 1 and int(page.planarconfig) != 1):
            tif.close()
            return None
        if page.dtype is None or np.dtype(page.dtype).kind not in "uif" or page.is_subsampled:
            tif.close()
            return None
        if samples == 1 and channel not in (None, 0):
            raise InputError(f"--channel {channel} given but the image has a single channel")
        if samples > 1:
            if channel is not None and not 0 <= channel < samples:
                raise InputError(f"--channel {channel} is out of range: the image has {samples} channels (0..{samples - 1})")
            if channel is None and samples not in (3, 4):
                raise InputError(f"image has {samples} channels (axes YXS); pick one with --channel N (0..{samples - 1})")
        memmap = None
        if page.is_memmappable:
            shape = (int(page.imagelength), int(page.imagewidth)) + ((samples,) if samples > 1 else ())
            memmap = tif.filehandle.memmap_array(page.dtype, shape, page.dataoffsets[0])
        elif not page.dataoffsets or page.chunks is None:
            tif.close()
            return None
        return LazyImage(path, tif, page, channel=channel, samples=samples, memmap=memmap)
    except InputError:
        tif.close()
        raise
    except Exception as err:
        tif.close()
        raise InputError(f"cannot read TIFF (corrupt or truncated?): {first_line(err)}") from err


def _iter_row_chunks(read_rows: Callable[[int, int], np.ndarray], height: int, rows: int) -> Iterator[np.ndarray]:
    for start in range(0, height, rows):
        yield read_rows(start, min(height, start + rows))


def lazy_percentiles(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    dtype,
    percentiles: Sequence[float],
    *,
    max_samples: int = 2**24,
) -> tuple[float, ...]:
    """Percentiles of an image read in row chunks, without holding it all.

    For 8- and 16-bit integer images the result is exact (the same as
    ``np.percentile`` with linear interpolation, from a full histogram). For
    other dtypes it is computed on a regular grid subsample of at most
    ``max_samples`` pixels.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(start, stop)`` returns rows as a (rows, W) array.
    shape : (H, W)
    dtype : dtype of the rows
    percentiles : sequence of float
        In [0, 100].

    Returns
    -------
    values : tuple of float

    Raises
    ------
    InputError
        If the image holds NaN or infinite values.

    Examples
    --------
    >>> image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    >>> lazy_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, [1, 99.8])
    (0.99, 98.802)
    """
    height, width = (int(n) for n in shape)
    dtype = np.dtype(dtype)
    q = np.asarray(percentiles, dtype=np.float64) / 100.0
    chunk_rows = max(1, (1 << 22) // max(width, 1))
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        offset = -int(np.iinfo(dtype).min)
        bins = int(np.iinfo(dtype).max) + offset + 1
        counts = np.zeros(bins, np.int64)
        for chunk in _iter_row_chunks(read_rows, height, chunk_rows):
            values = np.asarray(chunk).ravel()
            if offset:
                values = values.astype(np.int32) + offset
            counts += np.bincount(values, minlength=bins)
        cumulative = np.cumsum(counts)
        n = int(cumulative[-1])
        position = q * (n - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        v_below = np.searchsorted(cumulative, below, side="right").astype(np.float64) - offset
        v_above = np.searchsorted(cumulative, above, side="right").astype(np.float64) - offset
        result = v_below + (position - below) * (v_above - v_below)
        return tuple(round(float(v), 10) for v in result)
    step = max(1, math.ceil(math.sqrt(height * width / max_samples)))
    rows_per_read = step * max(1, chunk_rows // step)  # a multiple of step keeps the sampling grid regular
    samples = [
        np.asarray(chunk)[::step, ::step].astype(np.float32).ravel()
        for chunk in _iter_row_chunks(read_rows, height, rows_per_read)
    ]
    data = np.concatenate(samples)
    if not np.isfinite(data).all():
        raise InputError("image contains NaN or infinite values")
    return tuple(float(v) for v in np.percentile(data, q * 100))


def default_band_rows(width: int, *, halo: int = 128, window_pixels: int = WINDOW_PIXELS) -> int:
    """Band height (a multiple of 256 rows, at least 256) so a band plus halos holds ~``window_pixels``.

    Examples
    --------
    >>> default_band_rows(20000), default_band_rows(4096)
    (512, 3840)
    """
    rows = window_pixels // max(int(width), 1) - 2 * int(halo)
    return max(256, (rows // 256) * 256)


class _RowSpool:
    """Rows appended to a raw temporary file, read back in blocks (page cache, not process memory)."""

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype) -> None:
        self.shape = shape  # (..., H, W) : rows of all leading planes are interleaved per band
        self.dtype = np.dtype(dtype)
        handle, name = tempfile.mkstemp(prefix=".segtool-", suffix=".raw", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(handle, "w+b")
        self.rows = 0

    def append(self, block: np.ndarray) -> None:
        """Append (rows, W) (or (P, rows, W) for planes, stored plane-interleaved per append)."""
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self._file.write(data.tobytes())
        self.rows += data.shape[-2]

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _label_tiles(spool: _RowSpool, height: int, width: int, dtype, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Tiles of a spooled (H, W) uint32 label image, row-major, as ``dtype``."""
    spool._file.flush()
    row_bytes = width * 4
    for top in range(0, height, tile[0]):
        rows = min(tile[0], height - top)
        spool._file.seek(top * row_bytes)
        block = np.frombuffer(spool._file.read(rows * row_bytes), np.uint32).reshape(rows, width)
        block = block.astype(dtype, copy=False)
        for left in range(0, width, tile[1]):
            yield block[:, left : left + tile[1]]


def _plane_tiles(spool: _RowSpool, bands: list[tuple[int, int]], channels: int, width: int, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Tiles of spooled (C, H, W) float32 maps, written band by band as (C, rows, W) blocks."""
    spool._file.flush()
    band_offsets = []
    offset = 0
    for start, rows in bands:
        band_offsets.append((start, rows, offset))
        offset += channels * rows * width * 4
    height = bands[-1][0] + bands[-1][1] if bands else 0

    def read_plane_rows(channel: int, top: int, stop: int) -> np.ndarray:
        out = np.empty((stop - top, width), np.float32)
        for start, rows, base in band_offsets:
            lo, hi = max(top, start), min(stop, start + rows)
            if lo >= hi:
                continue
            spool._file.seek(base + (channel * rows + (lo - start)) * width * 4)
            out[lo - top : hi - top] = np.frombuffer(spool._file.read((hi - lo) * width * 4), np.float32).reshape(hi - lo, width)
        return out

    for channel in range(channels):
        for top in range(0, height, tile[0]):
            block = read_plane_rows(channel, top, min(height, top + tile[0]))
            for left in range(0, width, tile[1]):
                yield block[:, left : left + tile[1]]


def _write_tiled(path: Path, tiles: Iterator[np.ndarray], shape, dtype, *, pixel_size, unit, overwrite: bool) -> Path:
    import tifffile

    from segtool.io import atomic_output

    kwargs: dict[str, Any] = {}
    if pixel_size is not None and all(v and v > 0 for v in pixel_size):
        kwargs["resolution"] = (1.0 / float(pixel_size[1]), 1.0 / float(pixel_size[0]))
        kwargs["resolutionunit"] = "CENTIMETER" if unit == "cm" else "NONE"
    with atomic_output(path, overwrite=overwrite) as temp:
        tifffile.imwrite(
            temp,
            tiles,
            shape=tuple(shape),
            dtype=np.dtype(dtype),
            tile=OUTPUT_TILE,
            bigtiff=True,
            compression="zlib",
            photometric="minisblack",
            software="segtool",
            metadata=None,
            **kwargs,
        )
    return path


def predict_file_in_bands(
    source,
    model,
    labels_path: str | os.PathLike,
    *,
    prob_path: str | os.PathLike | None = None,
    overlay_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    prob_threshold: float | None = None,
    min_size: int | None = None,
    seed_threshold: float | None = None,
    split_height: float | None = None,
    band_rows: int | None = None,
    halo: int = 128,
    on_tile: Callable[[int, int], None] | None = None,
    tile_halo: int | None = None,
) -> dict[str, Any]:
    """Segment a large image band by band and write its labels as a tiled BigTIFF.

    Parameters
    ----------
    source : LazyImage or (H, W) ndarray
        The image; a :class:`LazyImage` is read a band at a time.
    model : LoadedModel
    labels_path : path-like
        Where the labels go (uint16, or uint32 above 65535 objects; tiled
        512x512, zlib, BigTIFF).
    prob_path : path-like, optional
        Also write the float32 maps, ``(C, H, W)``, same layout.
    overlay_path : path-like, optional
        Also write outlines over the image as PNG, downsampled so its longer
        side is at most 4096 pixels.
    overwrite : bool, optional
    tile, overlap, batch_size, tta, prob_threshold, min_size, seed_threshold, split_height, tile_halo
        As in :func:`segtool.unet.predict.predict_image`.
    band_rows : int, optional
        Rows per band; default from :func:`default_band_rows`.
    halo : int, optional
        Context rows above and below each band (see
        :func:`segtool.unet.predict.predict_label_bands`).
    on_tile : callable, optional
        ``on_tile(done, total)``.

    Returns
    -------
    figures : dict
        ``objects``, ``tiles``, ``bands``, ``shape``, ``dtype``,
        ``overlay_step`` (downsampling of the overlay, if written),
        ``seconds``, ``stage_seconds`` (``network``, ``postprocess``,
        ``write``; the network overlaps the other two).

    Raises
    ------
    InputError, ModelError, OutputError
    """
    from segtool.io import check_output_free
    from segtool.unet.bands import predict_label_bands
    from segtool.unet.predict import network_device_type, plan_inference_tiles

    start_time = time.perf_counter()
    labels_path = Path(labels_path)
    prob_path = Path(prob_path) if prob_path is not None else None
    overlay_path = Path(overlay_path) if overlay_path is not None else None
    for path in (labels_path, prob_path, overlay_path):
        if path is not None:
            check_output_free(path, overwrite=overwrite)
    config = model.config
    if config.in_channels != 1:
        from segtool.errors import ModelError

        raise ModelError(f"model expects {config.in_channels} input channels, the image has 1")

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
    low, high = lazy_percentiles(raw_rows, (height, width), dtype, [config.norm_low, config.norm_high])
    read_seconds = time.perf_counter() - read_start
    scale = np.float32(high - low + 1e-20)

    def normalized_rows(start: int, stop: int) -> np.ndarray:
        block = np.asarray(raw_rows(start, stop), dtype=np.float32)
        if not np.isfinite(block).all():
            raise InputError("image contains NaN or infinite values")
        return (block - np.float32(low)) / scale

    if band_rows is None:
        band_rows = default_band_rows(width, halo=halo)
    n_tiles = plan_inference_tiles(config, (height, width), device_type=network_device_type(model.net), tile=tile,
                                   overlap=overlap, tile_halo=tile_halo, batch_size=batch_size).n_tiles
    folder = labels_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{folder}: cannot create output folder: {err.strerror or err}") from err

    with ExitStack() as stack:
        try:
            label_spool = _RowSpool(folder, (height, width), np.uint32)
        except OSError as err:
            raise OutputError(f"{folder}: cannot write temporary files: {err.strerror or err}") from err
        stack.callback(label_spool.close)
        prob_spool = None
        if prob_path is not None:
            prob_spool = _RowSpool(prob_path.parent, (config.out_channels, height, width), np.float32)
            stack.callback(prob_spool.close)
        bands: list[tuple[int, int]] = []
        n_objects = 0
        stages: dict[str, float] = {"percentiles": read_seconds}
        try:
            for band in predict_label_bands(
                normalized_rows,
                (height, width),
                model,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                tta=tta,
                prob_threshold=prob_threshold,
                min_size=min_size,
                seed_threshold=seed_threshold,
                split_height=split_height,
                band_rows=band_rows,
                halo=halo,
                keep_maps=prob_spool is not None,
                on_tile=on_tile,
                tile_halo=tile_halo,
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

        label_dtype = np.uint16 if n_objects <= np.iinfo(np.uint16).max else np.uint32
        write_start = time.perf_counter()
        _write_tiled(
            labels_path,
            _label_tiles(label_spool, height, width, label_dtype, OUTPUT_TILE),
            (height, width),
            label_dtype,
            pixel_size=pixel_size,
            unit=unit,
            overwrite=overwrite,
        )
        figures: dict[str, Any] = {
            "objects": int(n_objects),
            "tiles": n_tiles,
            "bands": len(bands),
            "shape": [height, width],
            "dtype": np.dtype(label_dtype).name,
        }
        if prob_spool is not None:
            _write_tiled(
                prob_path,
                _plane_tiles(prob_spool, bands, config.out_channels, width, OUTPUT_TILE),
                (config.out_channels, height, width),
                np.float32,
                pixel_size=pixel_size,
                unit=unit,
                overwrite=overwrite,
            )
        if overlay_path is not None:
            figures["overlay_step"] = _write_overlay(overlay_path, raw_rows, label_spool, height, width, overwrite)
        stages["write"] = stages.get("write", 0.0) + time.perf_counter() - write_start
    figures["seconds"] = round(time.perf_counter() - start_time, 3)
    figures["stage_seconds"] = {k: round(v, 3) for k, v in stages.items()}
    return figures


def _write_overlay(path: Path, raw_rows, spool: _RowSpool, height: int, width: int, overwrite: bool) -> int:
    """Outlines on a downsampled copy of the image; returns the downsampling step."""
    from segtool.io import write_png
    from segtool.overlay import outline_overlay

    step = max(1, math.ceil(max(height, width) / OVERLAY_MAX_SIDE))
    chunk = max(step, (4096 // step) * step)
    image_parts, label_parts = [], []
    spool._file.flush()
    for top in range(0, height, chunk):
        stop = min(height, top + chunk)
        image_parts.append(np.asarray(raw_rows(top, stop))[::step, ::step].astype(np.float32))
        spool._file.seek(top * width * 4)
        block = np.frombuffer(spool._file.read((stop - top) * width * 4), np.uint32).reshape(stop - top, width)
        label_parts.append(block[::step, ::step].copy())
    write_png(path, outline_overlay(np.concatenate(image_parts), np.concatenate(label_parts)), overwrite=overwrite)
    return step
