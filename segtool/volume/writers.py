"""Writing Z stacks: calibrated label and float stacks that Fiji opens as stacks.

uint16 label stacks and float stacks are ImageJ hyperstacks (z spacing, unit
and x-y resolution in the file); uint32 label stacks are OME-TIFF with
``PhysicalSizeX/Y/Z``. Every file appears only when complete
(:func:`segtool.io.atomic_output`). Reading is in :mod:`segtool.volume.io`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from segtool.errors import InputError
from segtool.io import atomic_output
from segtool.labels import to_label_dtype

__all__ = ["write_label_volume", "write_float_volume"]


def _imagej_kwargs(voxel_size, unit, axes: str) -> dict:
    metadata: dict = {"axes": axes}
    kwargs: dict = {}
    if voxel_size is not None:
        z, y, x = (float(v) for v in voxel_size)
        metadata["spacing"] = z
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        if unit:
            metadata["unit"] = unit
    kwargs["metadata"] = metadata
    return kwargs


def _ome_kwargs(voxel_size, unit) -> dict:
    metadata: dict = {"axes": "ZYX"}
    if voxel_size is not None:
        z, y, x = (float(v) for v in voxel_size)
        metadata.update(PhysicalSizeZ=z, PhysicalSizeY=y, PhysicalSizeX=x)
        if unit:
            ome_unit = "µm" if unit == "micron" else unit
            metadata.update(PhysicalSizeZUnit=ome_unit, PhysicalSizeYUnit=ome_unit, PhysicalSizeXUnit=ome_unit)
    return {"metadata": metadata}


def write_label_volume(
    path: str | os.PathLike,
    labels: np.ndarray | Iterable[np.ndarray],
    *,
    shape: tuple[int, int, int] | None = None,
    dtype=None,
    voxel_size: tuple[float, float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a (Z, Y, X) label stack as a calibrated, zlib-compressed TIFF.

    uint16 labels become an ImageJ hyperstack (``images``/``slices`` = Z,
    ``spacing`` = z voxel size, ``unit``, x-y resolution tags), which Fiji
    opens as a Z stack with the voxel size set. uint32 labels (above 65535
    objects) become an OME-TIFF with ``PhysicalSizeX/Y/Z``.

    Parameters
    ----------
    path : path-like
    labels : (Z, Y, X) ndarray or iterable of (Y, X) planes
        An iterable (with ``shape`` and ``dtype``) is written plane by plane,
        so a stack larger than memory can be streamed.
    shape, dtype : optional
        Required with an iterable of planes.
    voxel_size : (z, y, x) floats, optional
    unit : str, optional
        ``"micron"`` etc.; None for pixel units.
    overwrite : bool, optional

    Returns
    -------
    Path

    Raises
    ------
    InputError
        For labels that are not a 3-D non-negative integer stack.
    OutputError
        If the file exists (without ``overwrite``) or cannot be written.
    """
    import tifffile

    if isinstance(labels, np.ndarray):
        data = to_label_dtype(labels)
        if data.ndim != 3:
            raise InputError(f"label stack must be 3-D (Z, Y, X), got shape {data.shape}")
        shape, dtype = data.shape, data.dtype
    else:
        if shape is None or dtype is None or len(shape) != 3:
            raise InputError("writing planes one by one needs the stack's 3-D shape and dtype")
        data = labels
        dtype = np.dtype(dtype)
    path = Path(path)
    if np.dtype(dtype) == np.uint16:
        kwargs = {"imagej": True, **_imagej_kwargs(voxel_size, unit, "ZYX")}
    else:
        kwargs = {"ome": True, **_ome_kwargs(voxel_size, unit)}
    big = math.prod(shape) * np.dtype(dtype).itemsize > 2**31
    if big and kwargs.get("imagej"):
        # ImageJ hyperstacks cannot be BigTIFF; ImageJ reads the contiguous planes past 4 GB itself.
        kwargs["compression"] = None
    else:
        kwargs["compression"] = "zlib"
        kwargs["bigtiff"] = big
    with atomic_output(path, overwrite=overwrite) as temp:
        if isinstance(data, np.ndarray):
            tifffile.imwrite(temp, data, software="segtool", **kwargs)
        else:
            tifffile.imwrite(temp, data=iter(data), shape=tuple(shape), dtype=dtype, software="segtool", **kwargs)
    return path


def write_float_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a (Z, Y, X) float32 stack as a calibrated ImageJ hyperstack."""
    import tifffile

    data = np.asarray(array, dtype=np.float32)
    if data.ndim != 3:
        raise InputError(f"float stack must be 3-D (Z, Y, X), got shape {data.shape}")
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as temp:
        tifffile.imwrite(temp, data, imagej=True, compression="zlib", software="segtool",
                         **_imagej_kwargs(voxel_size, unit, "ZYX"))
    return path
