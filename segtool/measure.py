"""Measurements of label images: one row per object, one summary line per image.

:func:`object_table` measures each object of a 2-D label image (area,
centroid, box, shape descriptors, intensity, calibrated copies);
:func:`summary_row` condenses such a table, 2-D or 3-D, into one line.
:mod:`segtool.volume.measure` measures stacks with the same unit tags, image
check and summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from segtool.errors import InputError
from segtool.labels import check_labels

__all__ = ["object_table", "summary_row", "unit_tag", "check_intensity"]

# regionprops_table name -> our column name, in output order.
_SHAPE_COLUMNS = {
    "label": "label",
    "area": "area",
    "centroid-0": "centroid_y",
    "centroid-1": "centroid_x",
    "bbox-0": "bbox_min_y",
    "bbox-1": "bbox_min_x",
    "bbox-2": "bbox_max_y",
    "bbox-3": "bbox_max_x",
    "perimeter": "perimeter",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "extent": "extent",
    "axis_major_length": "major_axis_length",
    "axis_minor_length": "minor_axis_length",
    "orientation": "orientation",
    "equivalent_diameter_area": "equivalent_diameter",
    "euler_number": "euler_number",
}
_INTENSITY_COLUMNS = {
    "intensity_mean": "mean_intensity",
    "intensity_min": "min_intensity",
    "intensity_max": "max_intensity",
}
_LENGTH_COLUMNS = ("perimeter", "major_axis_length", "minor_axis_length", "equivalent_diameter")


def unit_tag(unit: str | None, *, default: str = "cal") -> str:
    """Column-name form of a unit: ``micron`` -> ``um``; anything else made ASCII.

    Parameters
    ----------
    unit : str or None
        Unit as read from the file or given by the user.
    default : str, optional
        Tag for no unit, or one with no ASCII letter or digit.

    Returns
    -------
    tag : str

    Examples
    --------
    >>> unit_tag("µm"), unit_tag("Nano meter"), unit_tag(None), unit_tag(None, default="px")
    ('um', 'nanometer', 'cal', 'px')
    """
    if not unit:
        return default
    text = unit.strip().lower()
    if text in ("micron", "microns", "um", "µm", "μm", "micrometer", "micrometre"):
        return "um"
    cleaned = "".join(ch for ch in text if ch.isascii() and ch.isalnum())
    return cleaned or default


def check_intensity(image: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Check an intensity image measured under labels of ``shape``.

    Parameters
    ----------
    image : array_like
        Intensity image or stack.
    shape : tuple of int
        Shape of the label image.

    Returns
    -------
    image : ndarray
        ``image`` as an array (not copied).

    Raises
    ------
    InputError
        If the shapes differ or the dtype is not numeric or boolean.
    """
    intensity = np.asarray(image)
    if intensity.shape != shape:
        raise InputError(f"image shape {intensity.shape} differs from labels shape {shape}")
    if intensity.dtype.kind not in "uifb":
        raise InputError(f"image has unsupported dtype {intensity.dtype}")
    return intensity


def object_table(
    labels: np.ndarray,
    *,
    image: np.ndarray | None = None,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
) -> dict[str, np.ndarray]:
    """Measure every object: one row per label, one array per column.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Label image, 0 = background.
    image : (M, N) ndarray, optional
        Intensity image; adds ``mean_intensity``, ``min_intensity``,
        ``max_intensity`` and ``integrated_intensity`` (sum over the object).
    pixel_size : (float, float), optional
        Physical (y, x) size of a pixel. Adds calibrated copies of the
        geometric columns named with the unit, e.g. ``area_um2``,
        ``centroid_x_um``, ``perimeter_um`` (lengths only for square pixels).
    unit : str, optional
        Unit of ``pixel_size`` (``micron`` is written ``um``).

    Returns
    -------
    dict of str to (n_objects,) ndarray
        Pixel-unit columns ``label, area, centroid_y, centroid_x, bbox_min_y,
        bbox_min_x, bbox_max_y, bbox_max_x`` (bbox max exclusive),
        ``perimeter, eccentricity, solidity, extent, major_axis_length,
        minor_axis_length, orientation, equivalent_diameter, euler_number``, as
        computed by ``skimage.measure.regionprops_table``, then intensity and
        calibrated columns. Ready for ``pandas.DataFrame``.

    Raises
    ------
    InputError
        If ``labels`` is not a 2-D integer image or ``image`` has another shape.

    Examples
    --------
    >>> labels = np.zeros((5, 6), int); labels[1:3, 1:4] = 4
    >>> table = object_table(labels, image=np.full((5, 6), 2.0))
    >>> int(table["label"][0]), float(table["area"][0]), float(table["integrated_intensity"][0])
    (4, 6.0, 12.0)
    """
    from skimage.measure import regionprops_table

    labels = check_labels(labels, ndim=2)
    properties = [name.split("-")[0] for name in _SHAPE_COLUMNS]
    intensity = None
    if image is not None:
        intensity = check_intensity(image, labels.shape)
        intensity = intensity.astype(np.float64) if intensity.dtype.kind == "b" else intensity
        properties += list(_INTENSITY_COLUMNS)
    raw = regionprops_table(labels, intensity_image=intensity, properties=list(dict.fromkeys(properties)))
    table: dict[str, np.ndarray] = {}
    for key, column in {**_SHAPE_COLUMNS, **(_INTENSITY_COLUMNS if intensity is not None else {})}.items():
        table[column] = np.asarray(raw[key])
    table["label"] = table["label"].astype(np.int64)
    table["area"] = table["area"].astype(np.float64)
    if intensity is not None:
        # summed, not mean x area: an integer image's sum is then exact (8165, not 8164.999999999999)
        from scipy import ndimage

        sums = ndimage.sum_labels(np.asarray(intensity, dtype=np.float64), labels, table["label"])
        table["integrated_intensity"] = np.asarray(sums, dtype=np.float64).reshape(-1)
    if pixel_size is not None:
        size_y, size_x = (float(v) for v in pixel_size)
        if not (size_y > 0 and size_x > 0):
            raise InputError(f"pixel size must be positive, got {pixel_size}")
        tag = unit_tag(unit)
        table[f"area_{tag}2"] = table["area"] * size_y * size_x
        table[f"centroid_y_{tag}"] = table["centroid_y"] * size_y
        table[f"centroid_x_{tag}"] = table["centroid_x"] * size_x
        if np.isclose(size_y, size_x, rtol=1e-6):
            for column in _LENGTH_COLUMNS:
                table[f"{column}_{tag}"] = table[column] * size_x
    return table


def summary_row(labels: np.ndarray, table: Mapping[str, np.ndarray], *, dims: int = 2) -> dict[str, float | int]:
    """One summary line for an image: object count, mean and median area, coverage.

    Parameters
    ----------
    labels : (M, N) or (P, M, N) ndarray of int
        The label image ``table`` was measured on.
    table : dict
        From :func:`object_table`; calibrated area columns are summarised too.
    dims : {2, 3}, optional
        3 for a table of :func:`segtool.volume.measure.object_table_3d`:
        sizes are then the ``volume`` column (``mean_volume``,
        ``median_volume``, ``mean_volume_<unit>3``) instead of ``area``.

    Returns
    -------
    dict
        ``objects``, ``mean_area``, ``median_area`` (pixels), ``coverage``
        (fraction of pixels inside objects), ``mean_area_<unit>2`` when
        calibrated, ``mean_intensity`` (mean over objects) with an image. An
        image without objects is a valid result: every mean and the median
        are then 0, never NaN.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2]])
    >>> summary_row(labels, object_table(labels))
    {'objects': 2, 'mean_area': 1.5, 'median_area': 1.5, 'coverage': 0.75}
    """
    size = "area" if dims == 2 else "volume"
    sizes = np.asarray(table[size], dtype=np.float64)
    row: dict[str, float | int] = {
        "objects": int(sizes.size),
        f"mean_{size}": float(sizes.mean()) if sizes.size else 0.0,
        f"median_{size}": float(np.median(sizes)) if sizes.size else 0.0,
        "coverage": float(np.count_nonzero(labels)) / max(int(np.size(labels)), 1),
    }
    for column, values in table.items():
        if column.startswith(f"{size}_") and column.endswith(str(dims)):
            row[f"mean_{column}"] = float(np.mean(values)) if sizes.size else 0.0
    if "mean_intensity" in table:
        row["mean_intensity"] = float(np.mean(table["mean_intensity"])) if sizes.size else 0.0
    return row
