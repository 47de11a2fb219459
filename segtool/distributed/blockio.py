"""Big-image input for Dask: images read lazily, block by block.

:func:`open_blocks` wraps a TIFF (BigTIFF, tiled or striped, compressed or
not), a Zarr array or an OME-Zarr image as a 2-D Dask array. Nothing is
decoded when it is opened; each block reads only the tiles or strips it
covers (uncompressed contiguous TIFFs through a memory map, others through
tifffile's Zarr store). The task graph holds a small picklable reader that
opens the file again in each worker process, so it runs on a ``distributed``
cluster. Stacks and multi-channel images are reduced to one plane with the
rules of :func:`segtool.io.read_image`. Writing labels is in
:mod:`segtool.distributed.labelstore`.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segtool.calibration import ngff_axes, ngff_calibration, tiff_calibration
from segtool.errors import InputError, first_line
from segtool.intake import apply_input_transform, reads_colour, samples_last_to_input
from segtool.io import (
    PLANE_AXES,
    IMAGE_SUFFIXES,
    check_readable_file,
    reduce_to_2d,
    is_zarr_store,
    read_image,
)

__all__ = ["LazyImage2D", "open_blocks", "is_zarr_path", "dask_array_module"]

#: Whether a path is a Zarr store (the same test the input expansion uses).
is_zarr_path = is_zarr_store

#: Largest decoded strip or tile a block read may need; a TIFF stored in bigger
#: compressed pieces (e.g. one strip for the whole image) cannot be read in blocks.
MAX_SEGMENT_BYTES = 512 * 2**20

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
    input_transform: str = "intensity",
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
    input_transform : str, optional
        A model's input transform (:mod:`segtool.intake`), applied to
        each block as it is read (pixel by pixel, so the blocks make up the
        whole image's transform). ``hematoxylin`` reads R, G and B and takes
        no ``channel``; it refuses floating-point pixels, whose white level
        is the whole image's maximum.

    Returns
    -------
    LazyImage2D
        ``data`` equals ``read_image(path, channel=channel, plane=plane).data``
        (after ``input_transform``) once computed.

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
        return _open_zarr(path.resolve(), channel=channel, plane=plane, block=block, transform=input_transform)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path.resolve(), channel=channel, plane=plane, block=block, transform=input_transform)
    if suffix in IMAGE_SUFFIXES:
        colour = reads_colour(input_transform)
        if colour and channel is not None:
            raise InputError("--channel picks one channel; the hematoxylin input reads R, G and B")
        image = read_image(path, channel=channel, plane=plane, colour=colour)
        da = dask_array_module()
        data = da.from_array(apply_input_transform(image.data, input_transform), chunks=block,
                             name=f"open-blocks-{uuid.uuid4().hex}")
        return LazyImage2D(data, path, image.pixel_size, image.unit)
    if suffix == ".zarr":
        raise InputError("is a file, not a Zarr folder (zipped Zarr stores are not supported)")
    raise InputError(f"unsupported file type {suffix or '(no extension)'!r}; expected a Zarr folder or one of {', '.join(IMAGE_SUFFIXES)}")


def _block_request(chunks) -> tuple[int, int]:
    pair = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else tuple(chunks)
    if len(pair) != 2 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise InputError(f"block size must be a positive integer or a pair of them, got {chunks!r}")
    return int(pair[0]), int(pair[1])


def dask_array_module():
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

    def __init__(self, source: _Source, shape: tuple[int, ...], axes: str, *, channel: int | None, plane: int | None, dtype,
                 transform: str = "intensity") -> None:
        self.source = source
        self.axes = axes
        self.transform = transform
        self.average = False
        self._select: list[Any] = []  # per file axis: "Y", "X", an index, or a slice of channels to average
        kept = []
        for size, ax in zip(shape, axes):
            if ax in "YX":
                self._select.append(ax)
                kept.append(ax)
            elif size == 1:
                self._select.append(0)
            elif ax in PLANE_AXES:
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
        if self.average or self.transform != "intensity":  # read_image's channel rule, then the model's transform
            return samples_last_to_input(region, self.transform)
        if self.source.kind == "memmap":  # a copy, so no block keeps the file mapped
            return np.array(region, dtype=self.dtype, order="C")
        return np.ascontiguousarray(region, dtype=self.dtype)


def _span(index) -> str:
    if isinstance(index, slice):
        return f"{index.start or 0}:{'' if index.stop is None else index.stop}"
    return str(index)


def _lazy_image(
    source: _Source, path: Path, shape, axes: str, dtype, *, channel, plane, rgb: bool, segment, block, pixel_size, unit,
    transform: str = "intensity",
) -> LazyImage2D:
    """Validate the axes with read_image's rules, then wrap the reader as a Dask array."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2 or 0 in shape:
        raise InputError(f"image has no 2-D pixel data (shape {shape})")
    if len(axes) != len(shape):
        axes = "Q" * (len(shape) - 2) + "YX"
    # The same refusals and messages as read_image, checked on a stand-in with a 1x1 plane.
    stand_in = np.zeros([1 if ax in "YX" else n for n, ax in zip(shape, axes)], np.uint8)
    reduce_to_2d(stand_in, axes, channel=channel, plane=plane, rgb=rgb)
    dtype = np.dtype(dtype)
    if dtype.kind not in "uifb":
        raise InputError(f"unsupported pixel type {dtype}")
    if transform == "hematoxylin":
        if channel is not None:
            raise InputError("--channel picks one channel; the hematoxylin input reads R, G and B")
        if dtype.kind == "f":
            raise InputError("the hematoxylin input of a floating-point image needs the whole image's maximum; "
                             "predict it without --block-size")
    reader = _BlockReader(source, shape, axes, channel=channel, plane=plane, dtype=dtype.newbyteorder("="),
                          transform=transform)
    if reader.average or transform != "intensity":
        reader.dtype = np.dtype(np.float32)
    height, width = reader.shape
    iy, ix = axes.index("Y"), axes.index("X")
    seg_y, seg_x = (segment[iy], segment[ix]) if segment is not None else (None, None)
    chunks = (_aligned(block[0], seg_y, height), _aligned(block[1], seg_x, width))
    da = dask_array_module()
    data = da.from_array(
        reader,
        chunks=chunks,
        name=f"open-blocks-{uuid.uuid4().hex}",
        meta=np.empty((0, 0), reader.dtype),
        asarray=False,
        fancy=False,
    )
    return LazyImage2D(data, path, pixel_size, unit)


def _open_tiff(path: Path, *, channel, plane, block, transform: str) -> LazyImage2D:
    import tifffile

    check_readable_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("TIFF holds no image data")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            page = series.pages[0] if series.pages else tif.pages[0]
            pixel_size, unit = tiff_calibration(tif, page)
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
        transform=transform,
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


def _open_zarr(path: Path, *, channel, plane, block, transform: str) -> LazyImage2D:
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
        transform=transform,
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
        axes = ngff_axes(axes_meta)
    elif axes_meta is None and array.ndim == 5:  # NGFF 0.1/0.2: always (t, c, z, y, x)
        axes = "TCZYX"
    else:
        axes = _named_axes(None, array.ndim)
    pixel_size, _, unit = ngff_calibration(multiscale, dataset, axes)
    return _join(component, dataset["path"]), array, axes, pixel_size, unit


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}".strip("/") if prefix else str(name).strip("/")


def _dimension_names(array) -> list | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")  # xarray's convention for Zarr format 2
    return list(names) if names is not None else None


def _named_axes(names, ndim: int) -> str:
    """Axis letters from dimension names; without y and x names, the last two axes are (Y, X)."""
    if names is not None and len(names) == ndim:
        axes = ngff_axes(names)
        if axes.count("Y") == 1 and axes.count("X") == 1:
            return axes
    return "Q" * (ndim - 2) + "YX"
