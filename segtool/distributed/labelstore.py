"""Big-image output for Dask: label images written block by block.

- :func:`write_labels_zarr` writes labels as an OME-Zarr image (NGFF 0.4,
  Zarr format 2, one scale level), each worker storing its own blocks.
- :func:`write_labels_tiff` writes labels as a tiled, zlib-compressed BigTIFF,
  computing one row of blocks at a time so the client never holds the image.

Both store labels as uint16 while ``n_objects`` fits, uint32 above 65535, and
refuse (never wrap) a label that does not fit. Results appear only when
complete: data goes to a hidden temporary sibling that is renamed into place
at the end (for a Zarr folder, with an atomic exchange where the system has
one, see :func:`_move_into_place`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import uuid
from functools import partial
from pathlib import Path

import numpy as np

from segtool.distributed.blockio import dask_array_module
from segtool.errors import InputError, OutputError, OutputExistsError
from segtool.io import check_output_free, is_zarr_store, staged_output
from segtool.labels import check_labels, label_dtype
from segtool.pipeline.write import row_tiles, write_tiled_tiff

__all__ = ["write_labels_zarr", "write_labels_tiff"]

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



# --------------------------------------------------------------------------- writing


def _label_dtype(n_objects) -> np.dtype:
    if isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or not 0 <= n_objects <= _LABEL_MAX[np.dtype(np.uint32)]:
        raise InputError(f"n_objects must be an integer from 0 to {_LABEL_MAX[np.dtype(np.uint32)]}, got {n_objects!r}")
    return label_dtype(int(n_objects))


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
    da = dask_array_module()
    label_dtype = _label_dtype(n_objects)
    if not isinstance(labels, da.Array):
        labels = da.from_array(np.asarray(labels), chunks=2048)
    # Shape and dtype now; values block by block in _checked_labels, so nothing is computed here.
    check_labels(labels, ndim=2, allow_empty=False, allow_float=True, check_values=False)
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
    labels, label_dtype = _prepare_labels(labels, n_objects)
    scale = _scale(pixel_size)
    path = Path(path)
    check_output_free(path, overwrite=overwrite)  # refuse before computing anything
    return write_tiled_tiff(path, row_tiles(_row_blocks(labels)), labels.shape, label_dtype, pixel_size=scale,
                            unit=unit, unit_in_metadata=True, overwrite=overwrite)


def _row_blocks(labels):
    """The rows of blocks of a 2-D Dask array, top to bottom, each computed when it is needed."""
    top = 0
    for rows in labels.chunks[0]:
        yield np.asarray(labels[top : top + rows].compute())
        top += rows


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
        raise OutputExistsError(f"{path}: output exists; use --overwrite to replace it")
    if path.is_dir() and not path.is_symlink() and not is_zarr_store(path):
        raise OutputError(f"{path}: output path is a folder that is not a Zarr store; refusing to replace it")


def _temporary_sibling(path: Path, *, overwrite: bool):
    """Yield a hidden temporary folder next to ``path``; on success move it to ``path``, else delete it."""
    return staged_output(path, publish=partial(_move_into_place, path=path, overwrite=overwrite),
                         discard=_remove_after_writers)


def _move_into_place(temp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename ``temp`` to ``path``; an existing result is swapped out atomically where the system allows."""
    if not os.path.lexists(path):
        try:
            os.rename(temp, path)
        except OSError as err:  # a store that appeared since the check (another process) is never replaced
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            _check_zarr_output(path, overwrite=overwrite)
            return _move_into_place(temp, path, overwrite=overwrite)
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
