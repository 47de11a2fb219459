"""Physical pixel size read from image metadata, for every reader (whole images, rows, Dask blocks, Z stacks).

One set of rules: :func:`tiff_calibration` gives the x-y pixel size and unit,
:func:`tiff_z_spacing` the distance between planes of a stack,
:func:`ngff_calibration` both for an OME-Zarr (OME-NGFF) image, and
:func:`normalise_unit` the name every reader reports for a unit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ngff_axes", "ngff_calibration", "normalise_unit", "tiff_calibration", "tiff_z_spacing"]

# Micrometres as files spell them: micro sign (U+00B5) or Greek mu (U+03BC), ImageJ's escaped form, words.
_MICRON_SPELLINGS = ("um", "µm", "μm", "\\u00B5m", "micrometer", "micrometre", "microns", "micron")


def tiff_calibration(tif, page) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel size (y, x) and unit from OME or ImageJ metadata or the resolution tags of a TIFF.

    Parameters
    ----------
    tif : tifffile.TiffFile
    page : tifffile.TiffPage or None
        The page whose resolution tags count.

    Returns
    -------
    pixel_size : (float, float) or None
    unit : str or None
        None (both) when the file records no calibration, or only the
        default screen/print DPI.
    """
    if tif.is_ome and tif.ome_metadata:
        xml = tif.ome_metadata
        sizes = {ax: _ome_size(xml, ax) for ax in "XY"}
        if all(sizes.values()):
            unit_match = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
            unit = unit_match.group(1) if unit_match else "µm"
            return (sizes["Y"], sizes["X"]), normalise_unit(unit)
    if page is None:
        return None, None
    tags = page.tags
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if xres is None or yres is None:
        return None, None
    try:
        xppu = xres.value[0] / xres.value[1]
        yppu = yres.value[0] / yres.value[1]
    except (TypeError, ZeroDivisionError, IndexError):
        return None, None
    if xppu <= 0 or yppu <= 0:
        return None, None
    unit = None
    if tif.is_imagej and tif.imagej_metadata:
        unit = tif.imagej_metadata.get("unit")
    elif tif.is_shaped and tif.shaped_metadata:
        unit = tif.shaped_metadata[0].get("unit")
    if unit is None:
        res_unit = tags.get("ResolutionUnit")
        code = int(res_unit.value) if res_unit is not None else 2
        unit = {2: "inch", 3: "cm"}.get(code)
        if unit == "inch" and xppu == yppu and xppu in (1.0, 72.0, 96.0, 300.0):
            return None, None  # screen/print DPI written by default, not a microscope calibration
    if unit is None:
        return None, None
    return (1.0 / yppu, 1.0 / xppu), normalise_unit(unit)


def tiff_z_spacing(tif) -> float | None:
    """Distance between the planes of a TIFF stack, in the unit of its x-y calibration.

    Parameters
    ----------
    tif : tifffile.TiffFile

    Returns
    -------
    float or None
        OME ``PhysicalSizeZ`` or ImageJ ``spacing``; None when the file has
        neither, or a value that is not a positive finite number.
    """
    if tif.is_ome and tif.ome_metadata:
        return _ome_size(tif.ome_metadata, "Z")
    if tif.is_imagej and tif.imagej_metadata:
        value = tif.imagej_metadata.get("spacing")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if value > 0 and math.isfinite(value) else None
    return None


def ngff_axes(axes: Sequence[Any] | None) -> str:
    """One letter per axis of OME-Zarr ``multiscales`` axes (or Zarr dimension names); ``Q`` for an unknown one.

    An axis named ``x``, ``y``, ``z``, ``t``, ``c`` (any case), ``time`` or
    ``channel`` is that axis; otherwise its NGFF ``type`` decides for
    ``channel`` and ``time`` (a ``space`` axis of another name is not
    guessed: it could be any of the three). The Zarr stack reader and the Dask
    block reader both read axes with this, so a file means the same in both.

    Parameters
    ----------
    axes : sequence of dict or str, or None
        NGFF 0.4/0.5 axis entries (``{"name": ..., "type": ...}``), or plain names.

    Returns
    -------
    str
        Empty when ``axes`` is None.

    Examples
    --------
    >>> ngff_axes([{"name": "t", "type": "time"}, {"name": "ch", "type": "channel"}, {"name": "Z"}, "y", "x"])
    'TCZYX'
    >>> ngff_axes(["time", "depth", "y", "x"])
    'TQYX'
    """
    words = {"time": "T", "channel": "C"}  # full names, and the NGFF types that name an axis alone
    letters = []
    for axis in axes or ():
        name, kind = (axis.get("name"), axis.get("type")) if isinstance(axis, Mapping) else (axis, None)
        name = str(name or "").lower()
        letters.append(name.upper() if name in ("x", "y", "z", "t", "c") else words.get(name) or words.get(kind, "Q"))
    return "".join(letters)


def ngff_calibration(
    multiscale: Mapping[str, Any], dataset: Mapping[str, Any], axes: str
) -> tuple[tuple[float, float] | None, float | None, str | None]:
    """Pixel size (y, x), z spacing and unit of one level of an OME-Zarr (OME-NGFF) image.

    The scale of each axis is the product of the level's ``scale``
    transformations and the multiscale's own (NGFF 0.4/0.5); a transformation
    whose length is not the number of axes is ignored, and a level without a
    usable one has no calibration (NGFF requires one). Translations do not
    change sizes.

    Parameters
    ----------
    multiscale : mapping
        One entry of the ``multiscales`` metadata (its ``axes`` give the units).
    dataset : mapping
        The level read, an entry of ``multiscale["datasets"]``.
    axes : str
        One letter per array axis (``"ZYX"``, ``"TCZYX"``, ...); its Y and X,
        and Z when present, are the axes measured.

    Returns
    -------
    pixel_size : (float, float) or None
        None without a ``scale``, without exactly one Y and one X axis, for
        a size that is not a positive finite number, and for scale 1 with no
        unit (no calibration was written).
    z_spacing : float or None
        The Z axis's scale, when ``axes`` has one Z and the value is
        positive and finite.
    unit : str or None
        The unit the y and x axes share (:func:`normalise_unit`); None when
        they have none or differ.

    Examples
    --------
    >>> zyx = {"axes": [{"name": n, "unit": "micrometer"} for n in "zyx"],
    ...        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 2.0]}]}
    >>> ngff_calibration(zyx, {"coordinateTransformations": [{"type": "scale", "scale": [3.0, 0.25, 0.25]}]}, "ZYX")
    ((0.5, 0.5), 3.0, 'micron')
    >>> ngff_calibration({"axes": ["y", "x"]}, {"coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}, "YX")
    (None, None, None)
    """
    scale = _ngff_scale([dataset, multiscale], len(axes))
    if scale is None or axes.count("Y") != 1 or axes.count("X") != 1:
        return None, None, None
    iy, ix = axes.index("Y"), axes.index("X")
    z_spacing = None
    if axes.count("Z") == 1 and _positive(scale[axes.index("Z")]):
        z_spacing = scale[axes.index("Z")]
    size = (scale[iy], scale[ix])
    if not all(_positive(v) for v in size):
        return None, z_spacing, None
    meta = multiscale.get("axes")
    meta = meta if isinstance(meta, Sequence) and len(meta) == len(axes) else []
    units = {a.get("unit") for i, a in enumerate(meta) if i in (iy, ix) and isinstance(a, Mapping)}
    unit = units.pop() if len(units) == 1 else None
    if unit is None and size == (1.0, 1.0):
        return None, z_spacing, None
    return size, z_spacing, normalise_unit(unit) if unit else None


def _ngff_scale(holders: Sequence[Mapping[str, Any]], n_axes: int) -> list[float] | None:
    """Per-axis product of the ``scale`` transformations of ``holders``; None when there is none."""
    scale, found = [1.0] * n_axes, False
    for holder in holders:
        for transform in holder.get("coordinateTransformations") or []:
            values = transform.get("scale") if isinstance(transform, Mapping) and transform.get("type") == "scale" else None
            if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == n_axes:
                try:
                    scale = [s * float(v) for s, v in zip(scale, values)]
                except (TypeError, ValueError):
                    continue
                found = True
    return scale if found else None


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _ome_size(xml: str, axis: str) -> float | None:
    """``PhysicalSize<axis>`` of OME-XML when it is a positive finite number."""
    match = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
    if not match:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def normalise_unit(unit: str) -> str:
    """The unit name segtool reports: micrometres in any spelling become ``"micron"``.

    Examples
    --------
    >>> normalise_unit(" µm"), normalise_unit("micrometre"), normalise_unit("nm")
    ('micron', 'micron', 'nm')
    """
    unit = unit.strip()
    if unit in _MICRON_SPELLINGS:
        return "micron"
    return unit
