"""Physical pixel size read from image metadata, for every reader (whole images, rows, Dask blocks, Z stacks).

One set of rules: :func:`tiff_calibration` gives the x-y pixel size and unit,
:func:`tiff_z_spacing` the distance between planes of a stack, and
:func:`normalise_unit` the name every reader reports for a unit.
"""

from __future__ import annotations

import math
import re

__all__ = ["normalise_unit", "tiff_calibration", "tiff_z_spacing"]

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
