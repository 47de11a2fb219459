"""The write stage for images larger than memory: rows in, tiled BigTIFF out.

Both large-image schedules produce label rows a few at a time (bands from
:mod:`segtool.pipeline.bands`, rows of Dask blocks in
:mod:`segtool.distributed.labelstore`) and write them with the same two
pieces:

- :func:`row_tiles` cuts a stream of consecutive row blocks into the tiles of
  a tiled TIFF, in the row-major order tifffile writes them;
- :func:`write_tiled_tiff` writes those tiles as one zlib-compressed,
  512 x 512-tiled BigTIFF, atomically (:func:`segtool.io.atomic_output`).

:class:`RowSpool` keeps rows that are finished before the label count (and
so the label dtype) is known in a temporary raw file next to the output, so
they live in the page cache instead of process memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OUTPUT_TILE", "RowSpool", "row_tiles", "write_tiled_tiff"]

#: Tile size of the written TIFFs (as :func:`segtool.io.write_labels` uses for large images).
OUTPUT_TILE = (512, 512)


def row_tiles(blocks: Iterable[np.ndarray], tile: Sequence[int] = OUTPUT_TILE) -> Iterator[np.ndarray]:
    """Tiles of an image given as consecutive (rows, W) blocks, row-major, as a tiled TIFF stores them.

    Blocks may have any number of rows; at most one tile row of pixels is
    held besides the current block. Tiles at the right and bottom edges are
    smaller than ``tile`` (tifffile pads them).

    Examples
    --------
    >>> image = np.arange(30).reshape(5, 6)
    >>> tiles = list(row_tiles([image[:3], image[3:]], (2, 4)))
    >>> [t.shape for t in tiles]
    [(2, 4), (2, 2), (2, 4), (2, 2), (1, 4), (1, 2)]
    """
    tile_h, tile_w = (int(n) for n in tile)
    pending: np.ndarray | None = None
    for block in blocks:
        pending = block if pending is None else np.concatenate([pending, block])
        while pending.shape[0] >= tile_h:
            band, pending = pending[:tile_h], pending[tile_h:]
            yield from _cut(band, tile_w)
    if pending is not None and pending.shape[0]:
        yield from _cut(pending, tile_w)


def _cut(band: np.ndarray, tile_w: int) -> Iterator[np.ndarray]:
    for left in range(0, band.shape[1], tile_w):
        yield band[:, left : left + tile_w]


def write_tiled_tiff(
    path: str | os.PathLike,
    tiles: Iterable[np.ndarray],
    shape: Sequence[int],
    dtype,
    *,
    pixel_size: Sequence[float] | None = None,
    unit: str | None = None,
    unit_in_metadata: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write tiles (from :func:`row_tiles`) as a tiled, zlib-compressed BigTIFF.

    Parameters
    ----------
    path : path-like
    tiles : iterable of ndarray
        Row-major tiles of :data:`OUTPUT_TILE` (smaller at the far edges),
        plane after plane for a (P, H, W) image.
    shape : (H, W) or (P, H, W)
    dtype : dtype
    pixel_size : (float, float), optional
        Physical (y, x) pixel size, written as resolution tags when positive.
    unit : str, optional
        Unit of ``pixel_size``; ``"cm"`` sets the TIFF resolution unit.
    unit_in_metadata : bool, optional
        Also store ``unit`` in tifffile's JSON description, so
        :func:`segtool.io.read_image` reads it back.
    overwrite : bool, optional

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        If ``path`` exists (without ``overwrite``) or cannot be written.
    """
    import tifffile

    from segtool.io import atomic_output

    kwargs: dict[str, Any] = {"metadata": None}
    if pixel_size is not None and all(v and v > 0 for v in pixel_size):
        kwargs["resolution"] = (1.0 / float(pixel_size[1]), 1.0 / float(pixel_size[0]))
        kwargs["resolutionunit"] = "CENTIMETER" if unit == "cm" else "NONE"
        if unit and unit_in_metadata:
            kwargs["metadata"] = {"unit": unit}
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as temp:
        tifffile.imwrite(
            temp,
            iter(tiles),
            shape=tuple(int(n) for n in shape),
            dtype=np.dtype(dtype),
            tile=OUTPUT_TILE,
            bigtiff=True,
            compression="zlib",
            photometric="minisblack",
            software="segtool",
            **kwargs,
        )
    return path


class RowSpool:
    """Row blocks appended to a raw temporary file and read back later (page cache, not process memory).

    Blocks are (rows, W), or (P, rows, W) for P planes (stored one block
    after another, planes interleaved per block). The file is deleted on
    :meth:`close`.

    Parameters
    ----------
    folder : Path
        Where the temporary file goes (next to the output, on the same disk).
    width : int
    dtype : dtype
    """

    def __init__(self, folder: Path, width: int, dtype) -> None:
        self.width = int(width)
        self.dtype = np.dtype(dtype)
        handle, name = tempfile.mkstemp(prefix=".segtool-", suffix=".raw", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(handle, "w+b")
        self._blocks: list[tuple[int, int, int]] = []  # (first row, rows, byte offset)
        self._planes = 1
        self._end = 0

    def append(self, block: np.ndarray) -> None:
        """Append the next (rows, W) or (P, rows, W) block."""
        data = np.ascontiguousarray(block, dtype=self.dtype)
        first = self._blocks[-1][0] + self._blocks[-1][1] if self._blocks else 0
        self._planes = data.shape[0] if data.ndim == 3 else 1
        self._blocks.append((first, data.shape[-2], self._end))
        self._file.seek(self._end)
        self._file.write(data.tobytes())
        self._end += data.nbytes

    @property
    def rows(self) -> int:
        """Rows appended so far."""
        return self._blocks[-1][0] + self._blocks[-1][1] if self._blocks else 0

    def read(self, top: int, stop: int, *, plane: int = 0) -> np.ndarray:
        """Rows ``top:stop`` (of one plane) as a new (rows, W) array."""
        self._file.flush()
        row_bytes = self.width * self.dtype.itemsize
        out = np.empty((stop - top, self.width), self.dtype)
        for first, rows, offset in self._blocks:
            lo, hi = max(top, first), min(stop, first + rows)
            if lo >= hi:
                continue
            self._file.seek(offset + (plane * rows + lo - first) * row_bytes)
            data = self._file.read((hi - lo) * row_bytes)
            out[lo - top : hi - top] = np.frombuffer(data, self.dtype).reshape(hi - lo, self.width)
        return out

    def blocks(self, rows: int, *, plane: int = 0) -> Iterator[np.ndarray]:
        """The spooled image (one plane of it), ``rows`` rows at a time."""
        for top in range(0, self.rows, rows):
            yield self.read(top, min(self.rows, top + rows), plane=plane)

    def close(self) -> None:
        """Close and delete the temporary file."""
        self._file.close()
        self.path.unlink(missing_ok=True)
