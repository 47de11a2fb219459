"""Reading and writing Z stacks: the disk edge of :mod:`segtool.volume`.

A file is a Z stack when its axes metadata (ImageJ hyperstack, OME-TIFF,
OME-Zarr ``multiscales`` axes) holds a Z axis of more than one plane and no
other plane axis (time, ...); singleton axes are ignored and a channel axis
needs ``channel``. A stack whose axis is unknown (``Q``: a multi-page TIFF
without metadata) is taken as Z only when a z spacing is given.

The voxel size comes from the file (ImageJ ``spacing`` and resolution tags,
OME ``PhysicalSizeX/Y/Z``, OME-Zarr ``scale``) or from ``z_spacing``; TIFF and
OME-Zarr calibration and unit names follow :mod:`segtool.calibration`, as for 2-D images
and Dask blocks. Writing is in :mod:`segtool.volume.writers`:
label stacks as ImageJ hyperstacks (uint16; Fiji opens them as a Z stack
with the voxel size set) or as OME-TIFF (uint32, which ImageJ has no type
for; Fiji opens it through Bio-Formats), always through
:func:`segtool.io.atomic_output`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtool.calibration import ngff_axes, ngff_calibration, tiff_calibration, tiff_z_spacing
from segtool.errors import InputError, first_line
from segtool.io import MAX_IMAGE_BYTES, is_zarr_store
from segtool.labels import to_label_dtype

__all__ = [
    "StackInfo",
    "Volume",
    "probe_stack",
    "read_volume",
    "read_label_volume",
    "iter_planes",
    "anisotropy",
    "resolve_voxel_size",
]

# Axis letters tifffile uses for planes other than Z (time, ...), and for channels.
_OTHER_PLANE_AXES = "TIRLHEVAP"
_CHANNEL_AXES = "CS"


@dataclass(frozen=True)
class StackInfo:
    """What :func:`probe_stack` learnt from a file's metadata (no pixels read).

    Attributes
    ----------
    shape : tuple of int
        Shape of the image data as stored.
    axes : str
        tifffile axis letters for ``shape`` (``Q`` = unknown).
    z_axis : int
        Index of the Z axis in ``shape``.
    channel_axis : int or None
        Index of a channel axis of more than one channel.
    dtype : numpy dtype
    voxel_size : tuple of float or None
        (z, y, x) size of a voxel when the file gives a z step (y and x are
        1, i.e. pixel units, when it has no x-y calibration); else None.
    pixel_size : tuple of float or None
        (y, x) from the file, when it has an x-y calibration.
    unit : str or None
    kind : {"tiff", "zarr"}
    """

    shape: tuple[int, ...]
    axes: str
    z_axis: int
    channel_axis: int | None
    dtype: np.dtype
    voxel_size: tuple[float, float, float] | None
    pixel_size: tuple[float, float] | None
    unit: str | None
    kind: str

    @property
    def n_planes(self) -> int:
        """Number of Z planes."""
        return int(self.shape[self.z_axis])


@dataclass(frozen=True)
class Volume:
    """A (Z, Y, X) stack and its voxel size.

    Attributes
    ----------
    data : (Z, Y, X) ndarray
        Voxel values in the file's dtype.
    path : Path
    voxel_size : tuple of float or None
        (z, y, x) physical size of a voxel; None when neither the file nor the
        caller gave a z spacing. When only the z spacing is known, y and x are 1
        (pixel units) and ``unit`` is None.
    unit : str or None
        Unit of ``voxel_size`` (``"micron"``), None in pixel units.
    """

    data: np.ndarray
    path: Path
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None

    @property
    def z_spacing(self) -> float:
        """Anisotropy: z voxel size over the mean x-y pixel size (1 when unknown)."""
        return anisotropy(self.voxel_size)


def anisotropy(voxel_size: tuple[float, float, float] | None) -> float:
    """Ratio of the z voxel size to the mean of the y and x sizes (1 for None).

    Examples
    --------
    >>> anisotropy((2.0, 0.5, 0.5))
    4.0
    >>> anisotropy(None)
    1.0
    """
    if voxel_size is None:
        return 1.0
    z, y, x = voxel_size
    return float(z) / (0.5 * (float(y) + float(x)))


# --------------------------------------------------------------------- probing


def probe_stack(path: str | os.PathLike, *, z_spacing: float | None = None) -> StackInfo | None:
    """The Z-stack layout of ``path``, or None when it is not a Z stack.

    Reads metadata only. Files that are not TIFF or Zarr, 2-D images, and
    stacks along other axes (time) give None: the 2-D readers handle (or
    refuse) them with their own messages.

    Parameters
    ----------
    path : path-like
    z_spacing : float, optional
        When given, a stack of unknown axis (``Q``) is taken as a Z stack.

    Returns
    -------
    StackInfo or None
    """
    path = Path(path)
    try:
        if is_zarr_store(path):
            info = _probe_zarr(path)
        elif path.suffix.lower() in (".tif", ".tiff") and path.is_file() and path.stat().st_size > 0:
            info = _probe_tiff(path)
        else:
            return None
    except InputError:
        return None  # unreadable: the 2-D reader reports it
    if info is None:
        return None
    shape, axes, dtype, voxel, pixel, unit, kind = info
    live = [i for i, (n, a) in enumerate(zip(shape, axes)) if n > 1 and a not in "YX"]
    z_axes = [i for i in live if axes[i] == "Z"]
    if not z_axes and z_spacing is not None:
        z_axes = [i for i in live if axes[i] == "Q"][:1]
    others = [i for i in live if i not in z_axes and axes[i] not in _CHANNEL_AXES]
    if len(z_axes) != 1 or others or "Y" not in axes or "X" not in axes:
        return None
    channels = [i for i in live if axes[i] in _CHANNEL_AXES]
    return StackInfo(
        shape=tuple(int(n) for n in shape),
        axes=axes,
        z_axis=z_axes[0],
        channel_axis=channels[0] if len(channels) == 1 else (None if not channels else -1),
        dtype=np.dtype(dtype),
        voxel_size=voxel,
        pixel_size=pixel,
        unit=unit,
        kind=kind,
    )


def _probe_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            series = tif.series[0]
            page = series.pages[0] if series.pages else tif.pages[0]
            pixel, unit = tiff_calibration(tif, page)
            z = tiff_z_spacing(tif)
            return series.shape, series.axes, series.dtype, _voxel(z, pixel), pixel, unit, "tiff"
    except Exception as err:  # tifffile raises many types on corrupt files
        raise InputError(f"cannot read TIFF: {first_line(err)}") from err


def _probe_zarr(path: Path):
    """OME-Zarr (v0.4/v0.5) image: axes and scale of the first multiscale level."""
    attrs = {}
    for name in ("zarr.json", ".zattrs"):
        if (path / name).is_file():
            try:
                meta = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"cannot read Zarr metadata: {first_line(err)}") from err
            attrs = meta.get("attributes", meta)
            break
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    first = multiscales[0]
    names = ngff_axes(first.get("axes", []))
    dataset = first["datasets"][0]
    array_meta = {}
    for name in ("zarr.json", ".zarray"):
        candidate = path / dataset["path"] / name
        if candidate.is_file():
            array_meta = json.loads(candidate.read_text(encoding="utf-8"))
            break
    shape = tuple(array_meta.get("shape", ()))
    dtype = array_meta.get("data_type") or array_meta.get("dtype")
    if len(shape) != len(names) or dtype is None:
        return None
    pixel, z, unit = ngff_calibration(first, dataset, names)
    return shape, names, dtype, _voxel(z, pixel), pixel, unit, "zarr"


def _voxel(z: float | None, pixel: tuple[float, float] | None) -> tuple[float, float, float] | None:
    if z is None:
        return None
    return (z, *(pixel if pixel is not None else (1.0, 1.0)))


# --------------------------------------------------------------------- reading


def _plan(info: StackInfo, channel: int | None, path: Path) -> int | None:
    """Channel index to keep (checked), or None for a single-channel stack."""
    if info.channel_axis == -1:
        raise InputError(f"stack has several channel axes ({info.axes}); convert it to one channel axis first")
    if info.channel_axis is None:
        if channel not in (None, 0):
            raise InputError(f"--channel {channel} given but the stack has a single channel")
        return None
    n = info.shape[info.channel_axis]
    if channel is None:
        raise InputError(f"stack has {n} channels (axes {info.axes}); pick one with --channel N (0..{n - 1})")
    if not 0 <= channel < n:
        raise InputError(f"--channel {channel} is out of range: the stack has {n} channels (0..{n - 1})")
    return channel


def resolve_voxel_size(info: StackInfo, z_spacing: float | None) -> tuple[tuple[float, float, float] | None, str | None]:
    """(z, y, x) voxel size and unit of a stack: ``z_spacing`` overrides the file's z step.

    Without an x-y calibration the sizes are in pixel widths and the unit is None.

    Raises
    ------
    InputError
        If ``z_spacing`` is not a positive number.
    """
    if z_spacing is not None:
        if not (z_spacing > 0 and math.isfinite(z_spacing)):
            raise InputError(f"--z-spacing must be a number > 0, got {z_spacing!r}")
        pixel = info.pixel_size or (1.0, 1.0)
        return (float(z_spacing), *pixel), info.unit if info.pixel_size else None
    if info.voxel_size is not None:
        return info.voxel_size, info.unit if info.pixel_size else None
    return None, None


def _to_zyx(data: np.ndarray, axes: str, z_axis: int, channel_axis: int | None, channel: int | None) -> np.ndarray:
    """Select the channel, drop singletons and order the axes Z, Y, X."""
    index: list[int | slice] = [slice(None)] * data.ndim
    for i, (n, a) in enumerate(zip(data.shape, axes)):
        if i == channel_axis:
            index[i] = channel
        elif n == 1 and a not in "YX" and i != z_axis:
            index[i] = 0
    kept = [a if i != z_axis else "Z" for i, a in enumerate(axes) if not isinstance(index[i], int)]
    data = data[tuple(index)]
    return np.transpose(data, [kept.index("Z"), kept.index("Y"), kept.index("X")])


def read_volume(
    path: str | os.PathLike, *, channel: int | None = None, z_spacing: float | None = None
) -> Volume:
    """Read a Z stack as a (Z, Y, X) array with its voxel size.

    Parameters
    ----------
    path : path-like
        ImageJ hyperstack or OME-TIFF, or an OME-Zarr image (needs zarr).
    channel : int, optional
        Channel to keep from a multi-channel stack (required for those).
    z_spacing : float, optional
        Distance between planes in the x-y calibration's unit (in pixel
        widths when the file has none); overrides the file's z step.

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        When the file is not a Z stack, is too large, unreadable, or needs
        ``channel``.
    """
    path = Path(path)
    info = probe_stack(path, z_spacing=z_spacing)
    if info is None:
        raise InputError("not a Z stack (no Z axis of more than one plane in the file's axes metadata)")
    keep = _plan(info, channel, path)
    nbytes = math.prod(info.shape) * info.dtype.itemsize
    if nbytes > MAX_IMAGE_BYTES:
        raise InputError(f"stack of {info.shape} {info.dtype} ({nbytes / 2**30:.0f} GiB) is more than segtool loads at once")
    try:
        if info.kind == "zarr":
            data = np.asarray(_open_zarr_array(path)[...])
        else:
            import tifffile

            data = tifffile.imread(path, series=0)
    except InputError:
        raise
    except MemoryError as err:
        raise InputError("stack is too large to load into memory") from err
    except Exception as err:
        raise InputError(f"cannot read stack (corrupt or truncated?): {first_line(err)}") from err
    data = _to_zyx(np.asarray(data).reshape(info.shape), info.axes, info.z_axis, info.channel_axis, keep)
    if data.dtype.kind not in "uifb" or data.size == 0:
        raise InputError(f"unsupported stack: dtype {data.dtype}, shape {data.shape}")
    voxel, unit = resolve_voxel_size(info, z_spacing)
    return Volume(np.ascontiguousarray(data), path, voxel, unit)


def read_label_volume(path: str | os.PathLike) -> Volume:
    """Read a label stack (Z, Y, X) as uint16/uint32, with its voxel size.

    Raises
    ------
    InputError
        As :func:`read_volume`, and for values that are not labels.
    """
    volume = read_volume(path)
    return Volume(to_label_dtype(volume.data), volume.path, volume.voxel_size, volume.unit)


def iter_planes(
    path: str | os.PathLike, *, channel: int | None = None, z_spacing: float | None = None
) -> tuple[StackInfo, Iterator[np.ndarray]]:
    """The stack's layout and an iterator over its (Y, X) planes, one read at a time.

    Memory stays at one plane whatever the stack's size (TIFF pages are
    read one by one; Zarr by one z slice).

    Raises
    ------
    InputError
        As :func:`read_volume` (raised here, before iteration, for layout
        problems).
    """
    path = Path(path)
    info = probe_stack(path, z_spacing=z_spacing)
    if info is None:
        raise InputError("not a Z stack (no Z axis of more than one plane in the file's axes metadata)")
    keep = _plan(info, channel, path)
    return info, _planes(path, info, keep)


def _planes(path: Path, info: StackInfo, keep: int | None) -> Iterator[np.ndarray]:
    if info.kind == "zarr":
        array = _open_zarr_array(path)
        for z in range(info.n_planes):
            index = [slice(None)] * len(info.shape)
            index[info.z_axis] = slice(z, z + 1)
            block = np.asarray(array[tuple(index)])
            yield _to_zyx(block, info.axes, info.z_axis, info.channel_axis, keep)[0]
        return
    import tifffile

    # Pages of a TIFF series are the planes of its non-YX axes in C order.
    outer = [(i, n) for i, (n, a) in enumerate(zip(info.shape, info.axes)) if a not in "YXS"]
    strides = {}
    step = 1
    for i, n in reversed(outer):
        strides[i] = step
        step *= n
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if len(series.pages) != step:
                # fewer pages than planes: tifffile stores a stack of 3 or 4 planes as the samples of one page
                whole = np.asarray(series.asarray())
                yield from _to_zyx(whole, info.axes, info.z_axis, info.channel_axis, keep)
                return
            for z in range(info.n_planes):
                key = z * strides[info.z_axis]
                if keep is not None and info.channel_axis in strides:  # a channel axis of pages (not samples)
                    key += keep * strides[info.channel_axis]
                plane = series.asarray(key=key)
                plane = plane.reshape([n for i, (n, a) in enumerate(zip(info.shape, info.axes)) if a in "YXS"])
                plane_axes = "".join(a for a in info.axes if a in "YXS")
                if "S" in plane_axes:
                    plane = np.take(plane, keep or 0, axis=plane_axes.index("S"))
                    plane_axes = plane_axes.replace("S", "")
                yield plane.T if plane_axes == "XY" else plane
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read stack plane (corrupt or truncated?): {first_line(err)}") from err


def _open_zarr_array(path: Path):
    try:
        import zarr
    except ImportError as err:
        raise InputError("reading Zarr needs zarr >= 3: pip install 'segtool[distributed]'") from err
    node = zarr.open(store=str(path), mode="r")
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return node[multiscales[0]["datasets"][0]["path"]]
