"""Big-image I/O for Dask: images read lazily in blocks, labels written by the workers.

- :func:`open_blocks` wraps a TIFF (BigTIFF, tiled or striped, compressed or
  not), a Zarr array or an OME-Zarr image as a 2-D Dask array. Nothing is
  decoded when it is opened; each block reads only the tiles or strips it
  covers (uncompressed contiguous TIFFs through a memory map, others through
  tifffile's Zarr store). The task graph holds a small picklable reader that
  opens the file again in each worker process, so it runs on a
  ``distributed`` cluster. Stacks and multi-channel images are reduced to one
  plane with the rules of :func:`segtool.io.read_image`.
- :func:`write_labels_zarr` writes labels as an OME-Zarr image (NGFF 0.4,
  Zarr format 2, one scale level), each worker storing its own blocks.
- :func:`write_labels_tiff` writes labels as a tiled, zlib-compressed BigTIFF,
  computing one row of blocks at a time so the client never holds the image.

Both writers store labels as uint16 while ``n_objects`` fits, uint32 above
65535, and refuse (never wrap) a label that does not fit. Results appear
only when complete: data goes to a hidden temporary sibling that is renamed
into place at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import threading
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, OutputError, first_line
from segtool.io import (
    IMAGE_SUFFIXES,
    _CHANNEL_AXES,
    _PLANE_AXES,
    _check_readable_file,
    _normalise_unit,
    _reduce_to_2d,
    _tiff_calibration,
    atomic_output,
    check_output_free,
    is_zarr_store,
    read_image,
)

__all__ = ["LazyImage2D", "open_blocks", "is_zarr_path", "write_labels_zarr", "write_labels_tiff"]

#: Whether a path is a Zarr store (the same test the input expansion uses).
is_zarr_path = is_zarr_store

#: Tile size of written TIFFs (as :func:`segtool.io.write_labels` uses for large images).
TIFF_TILE = (512, 512)
#: Largest decoded strip or tile a block read may need; a TIFF stored in bigger
#: compressed pieces (e.g. one strip for the whole image) cannot be read in blocks.
MAX_SEGMENT_BYTES = 512 * 2**20
#: Space units of OME-NGFF 0.4 axes (UDUNITS-2 names).
_NGFF_SPACE_UNITS = frozenset(
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer inch kilometer "
    "megameter meter micrometer mile millimeter nanometer parsec petameter picometer terameter yard "
    "yoctometer yottameter zeptometer zettameter".split()
)
_UNIT_TO_NGFF = {
    "micron": "micrometer", "microns": "micrometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "\\u00B5m": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
    "Å": "angstrom", "pm": "picometer", "in": "inch",
}  # fmt: skip
_LABEL_MAX = {np.dtype(np.uint16): int(np.iinfo(np.uint16).max), np.dtype(np.uint32): int(np.iinfo(np.uint32).max)}


@dataclass(frozen=True)
class LazyImage2D:
    """A 2-D image as a Dask array, read from disk block by block when computed.

    Attributes
    ----------
    data : (M, N) dask.array.Array
        Pixels in the file's dtype (float32 when RGB is averaged).
    path : Path
        Where it is read from.
    pixel_size : tuple of float or None
        Physical (y, x) size of one pixel, or None when unknown.
    unit : str or None
        Unit of ``pixel_size`` (``"micron"`` for micrometres, as
        :func:`segtool.io.read_image` reports it).
    """

    data: Any
    path: Path
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None


# --------------------------------------------------------------------------- reading


def open_blocks(
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    plane: int | None = None,
    chunks: int | tuple[int, int] = 2048,
) -> LazyImage2D:
    """Open a 2-D image lazily as a Dask array of about ``chunks`` x ``chunks`` blocks.

    Parameters
    ----------
    path : path-like
        A TIFF file, a Zarr array folder (format 2 or 3), or an OME-Zarr image
        group (its first multiscale image, full resolution level). PNG and JPEG
        files are read whole with :func:`segtool.io.read_image` and then split.
    channel, plane : int, optional
        As in :func:`segtool.io.read_image`: the channel of a multi-channel
        image (RGB(A) is averaged without it), the plane of a stack.
    chunks : int or (int, int), optional
        Block height and width. Block edges are moved to the nearest multiple
        of the file's own tiles or strips, where those are smaller, so no
        tile is decoded twice for neighbouring blocks of a tiled image.

    Returns
    -------
    LazyImage2D
        ``data`` equals ``read_image(path, channel=channel, plane=plane).data``
        once computed.

    Raises
    ------
    InputError
        The path is missing, not an image or Zarr store, unreadable, or has
        axes that need ``channel`` or ``plane`` to reduce to 2-D.
    """
    path = Path(path)
    block = _block_request(chunks)
    if not path.exists():
        raise InputError("no such file or folder")
    if path.is_dir():
        if not is_zarr_path(path):
            raise InputError("is a folder but not a Zarr store (no .zattrs, .zarray, .zgroup or zarr.json inside)")
        return _open_zarr(path.resolve(), channel=channel, plane=plane, block=block)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path.resolve(), channel=channel, plane=plane, block=block)
    if suffix in IMAGE_SUFFIXES:
        image = read_image(path, channel=channel, plane=plane)
        da = _dask_array()
        data = da.from_array(image.data, chunks=block, name=f"open-blocks-{uuid.uuid4().hex}")
        return LazyImage2D(data, path, image.pixel_size, image.unit)
    if suffix == ".zarr":
        raise InputError("is a file, not a Zarr folder (zipped Zarr stores are not supported)")
    raise InputError(f"unsupported file type {suffix or '(no extension)'!r}; expected a Zarr folder or one of {', '.join(IMAGE_SUFFIXES)}")


def _block_request(chunks) -> tuple[int, int]:
    pair = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else tuple(chunks)
    if len(pair) != 2 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise InputError(f"block size must be a positive integer or a pair of them, got {chunks!r}")
    return int(pair[0]), int(pair[1])


def _dask_array():
    try:
        import dask.array as da
    except ImportError as err:
        raise InputError("big-image mode needs Dask: pip install 'segtool[distributed]'") from err
    return da


def _aligned(requested: int, segment: int | None, extent: int) -> int:
    """Block length near ``requested``, a multiple of the file's ``segment`` length when that is smaller."""
    if segment and segment < requested:
        requested = max(1, round(requested / segment)) * segment
    return max(1, min(requested, extent))


class _Source:
    """How to open the N-D array of a file again in any process (picklable, no open handles)."""

    def __init__(self, kind: str, path: Path, **params: Any) -> None:
        self.kind = kind  # "memmap", "tiff" or "zarr"
        self.path = str(path)
        self.params = params

    def open(self):
        """Return an array whose ``array[selection]`` reads only what the selection covers."""
        if self.kind == "memmap":
            p = self.params
            return np.memmap(self.path, dtype=np.dtype(p["dtype"]), mode="r", offset=p["offset"], shape=tuple(p["shape"]))
        import zarr

        if self.kind == "tiff":
            import tifffile

            tif = tifffile.TiffFile(self.path)  # stays open, for this process, as long as the store
            try:
                return zarr.open_array(store=tif.aszarr(series=0, level=0), mode="r")
            except BaseException:
                tif.close()
                raise
        return zarr.open_array(store=self.path, path=self.params.get("component", ""), mode="r")


class _BlockReader:
    """A (Y, X) view of one plane/channel of an N-D array in a file, read block by block.

    Dask calls ``reader[ys, xs]`` for each block. The file is opened on the
    first read in each process and the handle is dropped when the reader is
    pickled, so the task graph can be shipped to distributed workers.
    """

    def __init__(self, source: _Source, shape: tuple[int, ...], axes: str, *, channel: int | None, plane: int | None, dtype) -> None:
        self.source = source
        self.axes = axes
        self.average = False
        self._select: list[Any] = []  # per file axis: "Y", "X", an index, or a slice of channels to average
        kept = []
        for size, ax in zip(shape, axes):
            if ax in "YX":
                self._select.append(ax)
                kept.append(ax)
            elif size == 1:
                self._select.append(0)
            elif ax in _PLANE_AXES:
                self._select.append(plane)
            elif channel is not None:
                self._select.append(channel)
            else:  # validated before: an RGB(A) channel axis to average
                self._select.append(slice(0, 3))
                kept.append("C")
                self.average = True
        self._order = [kept.index("Y"), kept.index("X")] + ([kept.index("C")] if self.average else [])
        self.shape = (int(shape[axes.index("Y")]), int(shape[axes.index("X")]))
        self.dtype = np.dtype(dtype)
        self.ndim = 2
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _opened(self):
        if self._array is None:
            with self._lock:
                if self._array is None:
                    self._array = self.source.open()
        return self._array

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key if isinstance(key, tuple) else (key, slice(None))
        selection = tuple(ys if s == "Y" else xs if s == "X" else s for s in self._select)
        try:
            region = np.asarray(self._opened()[selection])
        except InputError:
            raise
        except Exception as err:  # tifffile, imagecodecs and zarr raise many types on corrupt data
            where = f"rows {_span(ys)}, columns {_span(xs)} of {Path(self.source.path).name}"
            raise InputError(f"cannot read block at {where}: {first_line(err)}") from err
        region = region.transpose(self._order)
        if self.average:  # as read_image: mean of the colour channels in float32
            return region.astype(np.float32).mean(axis=-1)
        if self.source.kind == "memmap":  # a copy, so no block keeps the file mapped
            return np.array(region, dtype=self.dtype, order="C")
        return np.ascontiguousarray(region, dtype=self.dtype)


def _span(index) -> str:
    if isinstance(index, slice):
        return f"{index.start or 0}:{'' if index.stop is None else index.stop}"
    return str(index)


def _lazy_image(
    source: _Source, path: Path, shape, axes: str, dtype, *, channel, plane, rgb: bool, segment, block, pixel_size, unit
) -> LazyImage2D:
    """Validate the axes with read_image's rules, then wrap the reader as a Dask array."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2 or 0 in shape:
        raise InputError(f"image has no 2-D pixel data (shape {shape})")
    if len(axes) != len(shape):
        axes = "Q" * (len(shape) - 2) + "YX"
    # The same refusals and messages as read_image, checked on a stand-in with a 1x1 plane.
    stand_in = np.zeros([1 if ax in "YX" else n for n, ax in zip(shape, axes)], np.uint8)
    _reduce_to_2d(stand_in, axes, channel=channel, plane=plane, rgb=rgb)
    dtype = np.dtype(dtype)
    if dtype.kind not in "uifb":
        raise InputError(f"unsupported pixel type {dtype}")
    reader = _BlockReader(source, shape, axes, channel=channel, plane=plane, dtype=dtype.newbyteorder("="))
    if reader.average:
        reader.dtype = np.dtype(np.float32)
    height, width = reader.shape
    iy, ix = axes.index("Y"), axes.index("X")
    seg_y, seg_x = (segment[iy], segment[ix]) if segment is not None else (None, None)
    chunks = (_aligned(block[0], seg_y, height), _aligned(block[1], seg_x, width))
    da = _dask_array()
    data = da.from_array(
        reader,
        chunks=chunks,
        name=f"open-blocks-{uuid.uuid4().hex}",
        meta=np.empty((0, 0), reader.dtype),
        asarray=False,
        fancy=False,
    )
    return LazyImage2D(data, path, pixel_size, unit)


def _open_tiff(path: Path, *, channel, plane, block) -> LazyImage2D:
    import tifffile

    _check_readable_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("TIFF holds no image data")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            page = series.pages[0] if series.pages else tif.pages[0]
            pixel_size, unit = _tiff_calibration(tif, page)
            rgb = bool(page is not None and getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB)
            keyframe = series.keyframe
            offset = series.dataoffset
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            memmappable = (
                offset is not None
                and keyframe.is_memmappable
                and getattr(series, "transform", None) is None
                and not getattr(series, "is_multifile", False)
                and int(keyframe.bitspersample) == dtype.itemsize * 8
                and offset + nbytes <= path.stat().st_size
            )
            if memmappable:
                source = _Source("memmap", path, dtype=np.dtype(tif.byteorder + dtype.char).str, offset=int(offset), shape=shape)
                segment = None
            else:
                source = _Source("tiff", path)
                segment = _tiff_segments(tif)
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types on corrupt files
        raise InputError(f"cannot read TIFF (corrupt or truncated?): {first_line(err)}") from err
    return _lazy_image(
        source, path, shape, axes, dtype,
        channel=channel, plane=plane, rgb=rgb, segment=segment, block=block, pixel_size=pixel_size, unit=unit,
    )  # fmt: skip


def _tiff_segments(tif) -> tuple[int, ...]:
    """Chunk shape of the first series as tifffile's Zarr store exposes it; refuse huge pieces."""
    try:
        import zarr

        array = zarr.open_array(store=tif.aszarr(series=0, level=0), mode="r")
    except Exception as err:  # also an old tifffile (< 2025.6.11) whose Zarr store predates zarr 3
        raise InputError(f"cannot read this TIFF in blocks (needs tifffile >= 2025.6.11 and zarr >= 3): {first_line(err)}") from err
    segment = tuple(int(n) for n in array.chunks)
    size = int(np.prod(segment, dtype=np.int64)) * array.dtype.itemsize
    if size > MAX_SEGMENT_BYTES:
        raise InputError(
            f"TIFF is stored in compressed pieces of {size / 2**20:.0f} MiB (chunk {segment}), too large to read "
            f"in blocks; save it tiled (e.g. tifffile.imwrite(..., tile=(512, 512)))"
        )
    return segment


def _open_zarr(path: Path, *, channel, plane, block) -> LazyImage2D:
    try:
        import zarr
    except ImportError as err:
        raise InputError("reading Zarr needs zarr >= 3: pip install 'segtool[distributed]'") from err
    try:
        node = zarr.open(store=str(path), mode="r")
        component, array, axes, pixel_size, unit = _zarr_image(zarr, node)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read Zarr store: {first_line(err)}") from err
    source = _Source("zarr", path, component=component)
    segment = array.shards or array.chunks
    return _lazy_image(
        source, path, array.shape, axes, array.dtype,
        channel=channel, plane=plane, rgb=False, segment=segment, block=block, pixel_size=pixel_size, unit=unit,
    )  # fmt: skip


def _zarr_image(zarr, node, component: str = ""):
    """(component, array, axes, pixel_size, unit) of a Zarr array or OME-Zarr image group."""
    if isinstance(node, zarr.Array):
        return component, node, _named_axes(_dimension_names(node), node.ndim), None, None
    attrs = node.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        if "bioformats2raw.layout" in attrs and "0" in node:  # bioformats2raw output: images in groups 0, 1, ...
            return _zarr_image(zarr, node["0"], _join(component, "0"))
        arrays = sorted(name for name, _ in node.arrays())
        hint = f"; give the path of one of its arrays ({', '.join(arrays[:5])})" if arrays else ""
        raise InputError(f"Zarr group has no OME-Zarr 'multiscales' metadata{hint}")
    multiscale = multiscales[0]
    datasets = multiscale.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InputError("OME-Zarr 'multiscales' metadata lists no datasets")
    dataset = datasets[0]
    array = node[dataset["path"]]
    if not isinstance(array, zarr.Array):
        raise InputError(f"OME-Zarr dataset {dataset['path']!r} is not an array")
    axes_meta = multiscale.get("axes")
    if isinstance(axes_meta, list) and len(axes_meta) == array.ndim:
        names = [a.get("name") if isinstance(a, dict) else a for a in axes_meta]
        kinds = [a.get("type") if isinstance(a, dict) else None for a in axes_meta]
        axes = "".join(_axis_letter(n, k) for n, k in zip(names, kinds))
    elif axes_meta is None and array.ndim == 5:  # NGFF 0.1/0.2: always (t, c, z, y, x)
        axes_meta, axes = None, "TCZYX"
    else:
        axes_meta, axes = None, _named_axes(None, array.ndim)
    pixel_size, unit = _ngff_calibration(multiscale, dataset, axes, axes_meta)
    return _join(component, dataset["path"]), array, axes, pixel_size, unit


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}".strip("/") if prefix else str(name).strip("/")


def _dimension_names(array) -> list | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")  # xarray's convention for Zarr format 2
    return list(names) if names is not None else None


def _axis_letter(name, kind) -> str:
    name = str(name or "").lower()
    if name in ("x", "y", "z", "t", "c"):
        return name.upper()
    return {"channel": "C", "time": "T", "space": "Z"}.get(kind, "Q")


def _named_axes(names, ndim: int) -> str:
    """Axis letters from dimension names; without y and x names, the last two axes are (Y, X)."""
    if names is not None and len(names) == ndim:
        axes = "".join(_axis_letter(n, None) for n in names)
        if axes.count("Y") == 1 and axes.count("X") == 1:
            return axes
    return "Q" * (ndim - 2) + "YX"


def _ngff_calibration(multiscale: dict, dataset: dict, axes: str, axes_meta) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel size (y, x) from the scale transformations, and the unit of the y and x axes."""
    if axes.count("Y") != 1 or axes.count("X") != 1:
        return None, None
    iy, ix = axes.index("Y"), axes.index("X")
    scale = np.ones(len(axes))
    for transform in list(dataset.get("coordinateTransformations") or []) + list(multiscale.get("coordinateTransformations") or []):
        values = transform.get("scale") if isinstance(transform, dict) and transform.get("type") == "scale" else None
        if isinstance(values, list) and len(values) == len(axes):
            scale *= np.asarray(values, dtype=np.float64)
    size = (float(scale[iy]), float(scale[ix]))
    if not all(np.isfinite(v) and v > 0 for v in size):
        return None, None
    units = {a.get("unit") for i, a in enumerate(axes_meta or []) if i in (iy, ix) and isinstance(a, dict)}
    unit = units.pop() if len(units) == 1 else None
    if unit is None and size == (1.0, 1.0):
        return None, None
    return size, _normalise_unit(unit) if unit else None


# --------------------------------------------------------------------------- writing


def _label_dtype(n_objects) -> np.dtype:
    if isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or not 0 <= n_objects <= _LABEL_MAX[np.dtype(np.uint32)]:
        raise InputError(f"n_objects must be an integer from 0 to {_LABEL_MAX[np.dtype(np.uint32)]}, got {n_objects!r}")
    return np.dtype(np.uint16 if n_objects <= _LABEL_MAX[np.dtype(np.uint16)] else np.uint32)


def _checked_labels(block: np.ndarray, *, label_dtype: np.dtype, n_objects: int, block_info=None) -> np.ndarray:
    """Cast one block of labels, refusing values the label dtype cannot hold (never wrapped)."""
    where = ""
    if block_info and None in block_info:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        where = f" in the block at rows {y0}:{y1}, columns {x0}:{x1}"
    if block.dtype == bool or block.size == 0:
        return block.astype(label_dtype)
    if block.dtype.kind == "f":
        if not np.isfinite(block).all():
            raise InputError(f"labels contain NaN or infinite values{where}")
        if not np.array_equal(block, np.round(block)):
            raise InputError(f"labels have fractional values{where}; expected integer object labels")
    low, high = block.min(), block.max()
    if low < 0:
        raise InputError(f"labels have negative values (min {low}){where}")
    if high > _LABEL_MAX[label_dtype]:
        raise InputError(f"label {high:.0f}{where} does not fit in {label_dtype.name} (chosen for n_objects={n_objects})")
    return block.astype(label_dtype)


def _prepare_labels(labels, n_objects):
    """Validate the label array lazily: a 2-D Dask array cast block by block to the label dtype."""
    da = _dask_array()
    label_dtype = _label_dtype(n_objects)
    if not isinstance(labels, da.Array):
        labels = da.from_array(np.asarray(labels), chunks=2048)
    if labels.ndim != 2:
        raise InputError(f"label image must be 2-D, got shape {labels.shape}")
    if 0 in labels.shape:
        raise InputError("label image is empty")
    if labels.dtype.kind not in "biuf":
        raise InputError(f"label image has dtype {labels.dtype}; expected integers")
    check = partial(_checked_labels, label_dtype=label_dtype, n_objects=int(n_objects))
    checked = labels.map_blocks(check, dtype=label_dtype, meta=np.empty((0, 0), label_dtype))
    return checked, label_dtype


def _regular(labels):
    """Rechunk to a regular grid (all blocks equal but the last per axis), as Zarr needs."""
    size = tuple(max(c) for c in labels.chunks)
    regular = all(all(n == s for n in c[:-1]) and c[-1] <= s for c, s in zip(labels.chunks, size))
    return labels if regular else labels.rechunk(size)


def _ngff_unit(unit: str | None) -> str | None:
    if not unit:
        return None
    unit = unit.strip()
    unit = _UNIT_TO_NGFF.get(unit, unit)
    return unit if unit in _NGFF_SPACE_UNITS else None


def _scale(pixel_size) -> list[float] | None:
    if pixel_size is None:
        return None
    values = [float(v) for v in pixel_size]
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"pixel size must be two positive numbers (y, x), got {pixel_size!r}")
    return values


def write_labels_zarr(
    path: str | os.PathLike,
    labels,
    *,
    n_objects: int,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write labels as an OME-Zarr image (NGFF 0.4, Zarr format 2), stored block by block by the workers.

    The group holds one array ``"0"`` with axes ``y``, ``x`` (type ``space``,
    with the unit when known), a ``scale`` transformation from ``pixel_size``
    (1 when unknown), ``image-label`` metadata so napari opens it as a labels
    layer, chunks equal to the Dask blocks, nested chunk keys and Blosc-zstd
    compression. The data goes to a hidden temporary folder next to ``path``,
    renamed into place once every block is stored.

    Parameters
    ----------
    path : path-like
        The ``.zarr`` folder to create.
    labels : (M, N) dask.array.Array
        Labels, 0 = background; computed with the active scheduler (the
        distributed client, if any). A NumPy array is accepted too.
    n_objects : int
        Largest label: uint16 is written up to 65535, uint32 above.
    pixel_size : (float, float), optional
        Physical (y, x) pixel size.
    unit : str, optional
        Unit of ``pixel_size`` (``"micron"``, ``"µm"``, ``"nm"``...), written
        as its OME-NGFF name (``"micrometer"``); units OME-NGFF does not
        list are left out.
    overwrite : bool, optional
        Replace an existing Zarr store at ``path``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        ``labels`` is not 2-D, has a non-numeric dtype, or holds a label that
        does not fit the dtype chosen from ``n_objects`` (or a negative one).
    OutputError
        ``path`` exists (without ``overwrite``), is a folder that is not a
        Zarr store, or cannot be written.
    """
    labels, label_dtype = _prepare_labels(labels, n_objects)
    try:
        import dask.array as da
        import numcodecs
        import zarr
    except ImportError as err:
        raise InputError("writing OME-Zarr needs zarr: pip install 'segtool[distributed]'") from err
    labels = _regular(labels)
    scale = _scale(pixel_size)
    given = Path(path)
    path = given.absolute()  # workers may run in another folder
    _check_zarr_output(path, overwrite=overwrite)
    axes = []
    for name in ("y", "x"):
        axis = {"name": name, "type": "space"}
        if scale is not None and _ngff_unit(unit):
            axis["unit"] = _ngff_unit(unit)
        axes.append(axis)
    name = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.stem
    attrs = {
        "multiscales": [
            {
                "version": "0.4",
                "name": name,
                "axes": axes,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale or [1.0, 1.0]}]}],
            }
        ],
        "image-label": {"version": "0.4"},
    }
    with _temporary_sibling(path, overwrite=overwrite) as temp:
        group = zarr.open_group(store=str(temp), mode="w", zarr_format=2)
        target = group.create_array(
            "0",
            shape=labels.shape,
            chunks=tuple(int(c[0]) for c in labels.chunks),
            dtype=label_dtype,
            fill_value=0,
            compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        group.attrs.update(attrs)
        guard = temp / _GUARD
        guard.touch()
        da.store(labels, _GuardedTarget(target, str(guard)), lock=False, compute=True)
        guard.unlink()
    return given


def write_labels_tiff(
    path: str | os.PathLike,
    labels,
    *,
    n_objects: int,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write labels as a tiled (512 x 512), zlib-compressed BigTIFF, one row of blocks at a time.

    Each row of Dask blocks is computed (with the active scheduler), cut into
    tiles and written before the next row is computed, so the client holds
    at most one row of blocks plus less than one row of tiles. Resolution tags
    carry ``pixel_size`` as :func:`segtool.io.write_labels` writes them, and
    the unit goes into tifffile's JSON description, so
    :func:`segtool.io.read_image` reads the calibration back.

    Parameters
    ----------
    path : path-like
        The ``.tif`` file to create.
    labels, n_objects, pixel_size, unit, overwrite
        As in :func:`write_labels_zarr`.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        As :func:`write_labels_zarr`.
    OutputError
        ``path`` exists (without ``overwrite``), is a folder, or cannot be
        written.
    """
    import tifffile

    labels, label_dtype = _prepare_labels(labels, n_objects)
    scale = _scale(pixel_size)
    path = Path(path)
    check_output_free(path, overwrite=overwrite)  # refuse before computing anything
    kwargs: dict[str, Any] = {"metadata": None}
    if scale is not None:
        kwargs["resolution"] = (1.0 / scale[1], 1.0 / scale[0])
        kwargs["resolutionunit"] = "CENTIMETER" if unit == "cm" else "NONE"
        if unit:
            kwargs["metadata"] = {"unit": unit}
    with atomic_output(path, overwrite=overwrite) as temp:
        tifffile.imwrite(
            temp,
            _row_tiles(labels, TIFF_TILE),
            shape=labels.shape,
            dtype=label_dtype,
            tile=TIFF_TILE,
            bigtiff=True,
            compression="zlib",
            photometric="minisblack",
            software="segtool",
            **kwargs,
        )
    return path


def _row_tiles(labels, tile: tuple[int, int]):
    """Tiles of a 2-D Dask array in row-major order, computing one row of blocks at a time."""
    height, width = labels.shape
    pending = None
    top = 0
    for rows in labels.chunks[0]:
        block = np.asarray(labels[top : top + rows].compute())
        top += rows
        pending = block if pending is None else np.concatenate([pending, block])
        while pending.shape[0] >= tile[0] or (top == height and pending.shape[0]):
            band, pending = pending[: tile[0]], pending[tile[0] :]
            for left in range(0, width, tile[1]):
                yield band[:, left : left + tile[1]]


# --------------------------------------------------------------------------- atomic folder output

#: File inside a temporary output folder that workers lock (shared) while they write a block; the
#: cleanup after a failure locks it exclusively, so no block still being written recreates the folder.
_GUARD = ".segtool-writing"


class _GuardedTarget:
    """A Zarr array that workers write to only while the temporary output folder is alive.

    When a write fails, Dask raises at once while other blocks may still be
    being written (by threads or on other workers), and Zarr would create
    the folders they need again after the cleanup. Each write therefore
    holds a shared ``flock`` on the guard file and checks that it still
    exists; the cleanup takes the lock exclusively before deleting the folder
    (see :func:`_remove_after_writers`).
    """

    def __init__(self, array, guard: str) -> None:
        self.array = array
        self.guard = guard
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __dask_tokenize__(self):
        return ("segtool-guarded-target", self.guard)  # the guard's folder name is unique per write

    def __setitem__(self, key, value) -> None:
        try:
            handle = os.open(self.guard, os.O_RDONLY)
        except FileNotFoundError:
            raise OutputError(f"{Path(self.guard).parent}: output folder was removed while blocks were being written") from None
        try:
            _lock(handle, shared=True)
            if not os.path.exists(self.guard):
                raise OutputError(f"{Path(self.guard).parent}: output folder was removed while blocks were being written")
            self.array[key] = value
        finally:
            os.close(handle)  # releases the lock


def _lock(handle: int, *, shared: bool) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no guard, cleanup is best effort
        return
    fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)


def _remove_after_writers(temp: Path) -> None:
    """Delete a temporary output folder once no worker is writing into it."""
    try:
        handle = os.open(temp / _GUARD, os.O_RDONLY)
    except OSError:
        _remove(temp)
        return
    try:
        _lock(handle, shared=False)
        _remove(temp)
    finally:
        os.close(handle)



def _check_zarr_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; never replace a folder that is not a Zarr store."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise OutputError(f"{path}: output exists; use --overwrite to replace it")
    if path.is_dir() and not path.is_symlink() and not is_zarr_path(path):
        raise OutputError(f"{path}: output path is a folder that is not a Zarr store; refusing to replace it")


@contextlib.contextmanager
def _temporary_sibling(path: Path, *, overwrite: bool):
    """Yield a hidden temporary folder next to ``path``; on success move it to ``path``, else delete it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path.parent}: cannot create output folder: {err.strerror or err}") from err
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield temp
        _move_into_place(temp, path, overwrite=overwrite)
    except BaseException as err:
        _remove_after_writers(temp)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"{path}: cannot write: {err.strerror or first_line(err)}") from err
        raise


def _move_into_place(temp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename ``temp`` to ``path``; an existing result is swapped out atomically where the system allows."""
    if not os.path.lexists(path):
        os.rename(temp, path)
        return
    _check_zarr_output(path, overwrite=overwrite)  # it may have appeared while the workers were writing
    if _exchange(temp, path):  # Linux: one atomic swap, readers never see a missing result
        _remove(temp)  # now the old result
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(path, old)
    try:
        os.rename(temp, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # file system without exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(second))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
