"""Physical pixel size read from image metadata, for every reader (whole images, rows, Dask blocks)."""

from __future__ import annotations

import re

__all__ = ["normalise_unit", "tiff_calibration"]


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
        sizes = {}
        for ax in "XY":
            match = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', xml)
            if match:
                sizes[ax] = float(match.group(1))
        if len(sizes) == 2 and all(v > 0 for v in sizes.values()):
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


def normalise_unit(unit: str) -> str:
    """The unit name segtool reports: micrometres in any spelling become ``"micron"``.

    Examples
    --------
    >>> normalise_unit(" µm"), normalise_unit("nm")
    ('micron', 'nm')
    """
    unit = unit.strip()
    if unit in ("um", "µm", "\\u00B5m", "micrometer", "microns"):
        return "micron"
    return unit
