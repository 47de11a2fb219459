"""Figures of one result and of a whole run: object sizes, coverage, border contacts, saturation, robust z-scores.

Pure functions: arrays or lists in, numbers out. :mod:`segtool.report.flags`
turns these figures into the report's flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["label_figures", "saturated_share", "robust_z", "median_or_none"]


def label_figures(labels: np.ndarray) -> dict[str, float | int | None]:
    """Object count, median diameter, coverage and border contacts of a label image.

    Parameters
    ----------
    labels : (M, N) or (P, M, N) ndarray of int
        0 is background; labels need not be consecutive.

    Returns
    -------
    figures : dict
        ``objects``; ``median_diameter`` in pixels (the equivalent circle's
        diameter, ``sqrt(4 area / pi)``, in 2-D; the equivalent sphere's,
        ``cbrt(6 volume / pi)``, for a Z stack), None without objects;
        ``coverage`` (share of pixels in an object); ``border_objects``
        (objects touching an edge of the field of view: in a Z stack the
        X and Y edges of any plane, since a stack's first and last planes
        cut every object that reaches them) and ``border_share`` (their
        share of the objects, 0 without objects).

    Examples
    --------
    >>> labels = np.zeros((10, 10), np.uint16)
    >>> labels[0:2, 0:2] = 1      # 4 px, on the border
    >>> labels[4:8, 4:8] = 3      # 16 px
    >>> f = label_figures(labels)
    >>> f["objects"], round(f["median_diameter"], 3), f["coverage"], f["border_objects"], f["border_share"]
    (2, 3.385, 0.2, 1, 0.5)
    """
    labels = np.asarray(labels)
    flat = labels.reshape(-1)
    areas = np.bincount(flat.astype(np.int64, copy=False)) if flat.size else np.zeros(1, np.int64)
    sizes = areas[1:][areas[1:] > 0]
    n = int(sizes.size)
    if n:
        exponent, factor = (1 / 3, 6 / math.pi) if labels.ndim == 3 else (1 / 2, 4 / math.pi)
        diameter = float(np.median((factor * sizes) ** exponent))
    else:
        diameter = None
    edges = [labels[..., 0, :], labels[..., -1, :], labels[..., :, 0], labels[..., :, -1]]
    touching = np.unique(np.concatenate([e.reshape(-1) for e in edges])) if labels.size else np.zeros(0)
    border = int(np.count_nonzero(touching))
    return {
        "objects": n,
        "median_diameter": diameter,
        "coverage": float(np.count_nonzero(flat)) / flat.size if flat.size else 0.0,
        "border_objects": border,
        "border_share": border / n if n else 0.0,
    }


def saturated_share(image: np.ndarray) -> float:
    """Share of pixels at the image's highest value, 0 for a constant image.

    A camera or a conversion that clips piles pixels up at one top value;
    in an unclipped image the maximum is held by a handful of pixels. So
    the share at the maximum measures clipping whatever the dtype or the
    bit depth the values were stored with (12-bit data in uint16, say).

    Examples
    --------
    >>> saturated_share(np.array([[0, 1, 255, 255]], np.uint8))
    0.5
    >>> saturated_share(np.full((3, 3), 7))
    0.0
    """
    data = np.asarray(image)
    if data.size == 0:
        return 0.0
    top, bottom = np.nanmax(data), np.nanmin(data)
    if not top > bottom:
        return 0.0
    return float(np.count_nonzero(data == top)) / data.size


def median_or_none(values: Sequence[float]) -> float | None:
    """The median of ``values``, None when there are none.

    Examples
    --------
    >>> median_or_none([3, 1, 2]), median_or_none([])
    (2.0, None)
    """
    return float(np.median(np.asarray(values, dtype=np.float64))) if len(values) else None


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores: distance from the median in units of the scaled median absolute deviation (MAD).

    ``z = 0.6745 (x - median) / MAD`` (Iglewicz and Hoaglin's modified
    z-score; 0.6745 makes it match the ordinary z-score for normal data).
    One far-off image moves the median and the MAD hardly at all, so it
    stands out instead of inflating the spread. When more than half the
    values are equal (MAD 0), the mean absolute deviation times 1.2533
    stands in; when every value is equal, all scores are 0.

    Parameters
    ----------
    values : sequence of float

    Returns
    -------
    z : ndarray of float64, same length

    Examples
    --------
    >>> robust_z([10, 11, 9, 10, 12, 100]).round(2).tolist()
    [-0.34, 0.34, -1.01, -0.34, 1.01, 60.37]
    >>> robust_z([5, 5, 5, 5, 9]).round(2).tolist()
    [0.0, 0.0, 0.0, 0.0, 3.99]
    >>> robust_z([4, 4]).tolist()
    [0.0, 0.0]
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return data
    centre = np.median(data)
    deviation = np.abs(data - centre)
    mad = np.median(deviation)
    if mad > 0:
        return 0.6745 * (data - centre) / mad
    mean_dev = deviation.mean()
    if mean_dev > 0:
        return (data - centre) / (1.2533 * mean_dev)
    return np.zeros_like(data)
