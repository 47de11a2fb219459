"""Intensity normalisation shared by training and inference."""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError
from segtool.pipeline.percentiles import sample_percentiles

__all__ = ["map_to_unit", "normalize_percentile"]


def normalize_percentile(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    *,
    eps: float = 1e-20,
) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles of ``image`` to 0 and 1.

    Values outside the percentile range are not clipped, as in CSBDeep: a
    bright object keeps its contrast above 1 instead of being flattened.

    Parameters
    ----------
    image : ndarray
        Image of any real dtype and shape; all pixels count.
    low, high : float, optional
        Percentiles (0-100) mapped to 0 and 1.
    eps : float, optional
        Added to the denominator so a constant image does not divide by zero.

    Returns
    -------
    normalized : ndarray of float32
        A new array; ``image`` is not modified.

    Raises
    ------
    InputError
        If the percentiles are not ``0 <= low < high <= 100``, the image is
        empty, or it holds NaN or infinite values.

    Examples
    --------
    >>> out = normalize_percentile(np.arange(101.0), 0, 100)
    >>> float(out[0]), float(out[-1])
    (0.0, 1.0)
    """
    if not 0 <= low < high <= 100:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    if image.size == 0:
        raise InputError("image is empty")
    data = np.asarray(image, dtype=np.float32)
    lo, hi = sample_percentiles(data, [low, high])
    return map_to_unit(data, lo, hi, eps=eps)


def map_to_unit(data: np.ndarray, low, high, *, eps: float = 1e-20) -> np.ndarray:
    """``(data - low) / (high - low + eps)`` in float32: the normalisation once the percentiles are known.

    Every schedule applies its percentiles with this (whole images, rows of
    a band, Dask blocks), so a pixel gets the same value in all of them.
    ``high - low + eps`` is computed in the type of ``low`` and ``high``
    (float32 from :func:`numpy.percentile` of float32 pixels, Python floats
    from :mod:`segtool.pipeline.percentiles`) and then rounded to float32.

    Examples
    --------
    >>> map_to_unit(np.array([0, 5, 10], np.uint8), 0.0, 10.0).tolist()
    [0.0, 0.5, 1.0]
    """
    data = np.asarray(data, dtype=np.float32)
    return ((data - np.float32(low)) / np.float32(high - low + eps)).astype(np.float32, copy=False)
