"""The read stage for images larger than memory: a TIFF plane read a few rows at a time.

:func:`open_lazy` opens a single-plane TIFF without decoding it; the
:class:`LazyImage` it returns reads rows on demand, through a memory map for
uncompressed contiguous data, otherwise by decoding only the strips or tiles
that hold the requested rows. The band schedule
(:func:`segtool.pipeline.bigimage.write_labels_in_bands`) reads through it; the
Dask block schedule reads blocks through :mod:`segtool.distributed.blockio`,
which opens the same files as a Dask array. Both apply the channel rules of
:func:`segtool.io.read_image` and raise :class:`segtool.errors.InputError`
like it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, first_line
from segtool.intake import samples_last_to_input

__all__ = ["LazyImage", "open_lazy"]


class LazyImage:
    """A 2-D image in a TIFF file, read a few rows at a time.

    Use :func:`open_lazy` to make one; close it (or use ``with``) when done.

    Attributes
    ----------
    path : Path
    shape : (int, int)
        (H, W) of the plane.
    dtype : numpy.dtype
        dtype of the rows :meth:`read_rows` returns (float32 when RGB is
        averaged or an input transform is applied).
    pixel_size : (float, float) or None
    unit : str or None
    """

    def __init__(self, path: Path, tif, page, *, channel: int | None, samples: int, memmap,
                 input_transform: str = "intensity") -> None:
        self.path = path
        self._transform = input_transform
        self._tif = tif
        self._page = page
        self._channel = channel
        self._samples = samples
        self._memmap = memmap
        self._cache: dict[int, np.ndarray] = {}
        self.shape = (int(page.imagelength), int(page.imagewidth))
        averaged = samples > 1 and channel is None
        transformed = input_transform != "intensity"
        self.dtype = np.dtype(np.float32) if averaged or transformed else np.dtype(page.dtype)
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
        """(rows, W[, S]) -> (rows, W) following the channel rule of :func:`segtool.io.read_image`,
        then the model's input transform (pixel by pixel, so row blocks give what the whole image gives)."""
        samples = data.reshape(data.shape[0], data.shape[1], -1)
        if self._channel is not None:
            samples = samples[..., self._channel]
        return samples_last_to_input(samples, self._transform)

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
        from segtool.calibration import tiff_calibration

        return tiff_calibration(tif, page)
    except Exception:  # calibration is a nicety; never fail a read for it
        return None, None


def open_lazy(path: str | os.PathLike, *, channel: int | None = None,
              input_transform: str = "intensity") -> LazyImage | None:
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
    input_transform : str, optional
        A model's input transform (:mod:`segtool.intake`), applied to
        the rows as they are read. ``hematoxylin`` reads R, G and B, and
        takes no ``channel``; a floating-point file returns None with it
        (its white level is the whole image's maximum, which rows cannot tell).

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
        if input_transform == "hematoxylin":
            if channel is not None:
                raise InputError("--channel picks one channel; the hematoxylin input reads R, G and B")
            if np.dtype(page.dtype).kind == "f":
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
        return LazyImage(path, tif, page, channel=channel, samples=samples, memmap=memmap,
                         input_transform=input_transform)
    except InputError:
        tif.close()
        raise
    except Exception as err:
        tif.close()
        raise InputError(f"cannot read TIFF (corrupt or truncated?): {first_line(err)}") from err
