"""Intensity normalisation shared by training and inference."""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError
from segtool.pipeline.percentiles import sample_percentiles

__all__ = ["OUTLIER_CEILING", "OUTLIER_RATIO", "bright_outlier_mask", "map_to_unit", "normalize_percentile", "robust_percentiles"]

#: An object is a bright outlier when its mean intensity above the background is this many times the median
#: object's. Saturated mitotic or dead cells in the fields the issue describes stood 5-10x above the others; ordinary
#: fields of the training split have nuclei within about 2.5x of each other.
OUTLIER_RATIO = 3.0
#: Outliers are only excluded while they are a minority of the objects (otherwise they are the objects) and cover
#: a small part of the image: a dense field of nuclei that Otsu's threshold merges into one region is not an
#: outlier (a gamma-0.5 copy of a 289-nucleus test image lost every nucleus before this bound).
OUTLIER_SHARE = 0.25
OUTLIER_AREA = 0.05
#: ... and only when they dim the rest: the percentile without them is under this share of the one with them.
OUTLIER_DIMMING = 0.75
#: Where outliers were left out of the percentiles, normalised values are capped here: beside three blobs 20x
#: brighter than 25 synthetic nuclei, the shipped model found 26 objects with a cap of 2 (the blobs touch a few
#: nuclei), 23 with 3, 17 with 5 and 8 uncapped.
OUTLIER_CEILING = 2.0
#: Objects are found on a regular subsample of at most this many pixels.
OUTLIER_PIXELS = 1 << 20
#: Components of fewer pixels are specks of noise, not objects, for the rule.
OUTLIER_MIN_OBJECT = 16


def normalize_percentile(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    *,
    eps: float = 1e-20,
    robust: bool = False,
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
    robust : bool, optional
        Leave a few very bright objects out of the percentiles
        (:func:`robust_percentiles`), so they do not dim the others; when
        there are such objects, values are capped at
        :data:`OUTLIER_CEILING`.

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
    if not robust:
        lo, hi = sample_percentiles(data, [low, high])
        return map_to_unit(data, lo, hi, eps=eps)
    lo, hi, outliers = _robust_percentiles(data, low, high)
    out = map_to_unit(data, lo, hi, eps=eps)
    if outliers:
        # Outliers 20x brighter than the nuclei still swamp a network's features far around them: they are
        # kept bright, but no brighter than twice the nuclei's range.
        np.minimum(out, np.float32(OUTLIER_CEILING), out=out)
    return out


def robust_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.8):
    """The ``low`` and ``high`` percentiles of an image, leaving out a few objects far brighter than the rest.

    The rule: find the objects (Otsu's threshold; when it finds fewer than
    four objects of :data:`OUTLIER_MIN_OBJECT` pixels, they may be a handful
    of saturated blobs that pulled the threshold up to themselves, so Otsu's
    threshold of the pixels below it is tried once more); measure each one's
    mean intensity above that background level; objects brighter than
    :data:`OUTLIER_RATIO` times the median object are outliers when they are
    at most :data:`OUTLIER_SHARE` of all objects (and there are at least four
    objects) and cover at most :data:`OUTLIER_AREA` of the image. The ``high``
    percentile is then taken over the pixels outside the outliers (grown by
    two pixels to cover their blurred rims), when that lowers it below
    :data:`OUTLIER_DIMMING` of its value (above ``low``). Without
    outliers the result is exactly :func:`numpy.percentile`'s.

    Parameters
    ----------
    image : (H, W) ndarray
        Not modified.
    low, high : float, optional
        Percentiles, 0-100.

    Returns
    -------
    low_value, high_value : float32 or float

    Examples
    --------
    >>> image = np.zeros((64, 64), np.float32)
    >>> for k in range(8):
    ...     image[4 + 7 * k : 9 + 7 * k, 4:9] = 100.0
    >>> image[10:20, 40:50] = 5000.0  # one saturated cell
    >>> [float(v) for v in robust_percentiles(image, 1, 99.8)]
    [0.0, 100.0]
    >>> float(np.percentile(image, 99.8))
    5000.0
    """
    lo, hi, _ = _robust_percentiles(np.asarray(image, dtype=np.float32), low, high)
    return lo, hi


def _robust_percentiles(data: np.ndarray, low: float, high: float):
    lo, hi = sample_percentiles(data, [low, high])
    outliers = bright_outlier_mask(data, background=float(lo))
    if outliers is None:
        return lo, hi, False
    kept = data[~outliers]
    if kept.size == 0:
        return lo, hi, False
    kept_high = sample_percentiles(kept, [high])[0]
    if kept_high - lo > OUTLIER_DIMMING * (hi - lo):
        return lo, hi, False  # the outliers barely move the percentile: keep the model's own normalisation
    return lo, kept_high, True


def bright_outlier_mask(image: np.ndarray, *, background: float) -> np.ndarray | None:
    """Pixels of the few objects that are far brighter than the others (see :func:`robust_percentiles`).

    Returns None when there are no such objects; otherwise a boolean mask of
    the image's shape.

    Examples
    --------
    >>> image = np.zeros((40, 40), np.float32)
    >>> for k in range(5):
    ...     image[2 + 7 * k : 6 + 7 * k, 2:6] = 10.0
    >>> bright_outlier_mask(image, background=0.0) is None
    True
    >>> image[20:26, 30:36] = 1000.0
    >>> int(bright_outlier_mask(image, background=0.0)[22, 32])
    1
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    if image.ndim != 2 or image.size < 64:
        return None
    step = max(1, int(np.ceil(np.sqrt(image.size / OUTLIER_PIXELS))))
    sample = np.asarray(image[::step, ::step], dtype=np.float32) - np.float32(background)
    smallest = max(4, OUTLIER_MIN_OBJECT // (step * step))
    values = sample
    for _ in range(2):
        # Otsu's threshold; when it only found a few objects, they may be the outliers themselves (their
        # brightness pulled the threshold up to them), so look again below them.
        if float(values.max()) <= float(values.min()):
            return None
        level = threshold_otsu(values)
        labels, count = ndi.label(sample > level)
        sizes = np.bincount(labels.ravel())[1:]
        objects = np.flatnonzero(sizes >= smallest) + 1
        if objects.size >= 4:
            break
        values = values[values <= level]
    else:
        return None
    means = np.asarray(ndi.mean(sample, labels, objects), dtype=np.float64)
    typical = float(np.median(means))
    if typical <= 0:
        return None
    bright = means > OUTLIER_RATIO * typical
    if not bright.any() or bright.sum() > OUTLIER_SHARE * objects.size:
        return None
    mask = np.isin(labels, objects[bright])
    if mask.mean() > OUTLIER_AREA:
        return None
    mask = ndi.binary_dilation(mask, iterations=2)
    if step > 1:  # back to the image's grid: each sample stands for a step x step block
        mask = np.repeat(np.repeat(mask, step, axis=0), step, axis=1)[: image.shape[0], : image.shape[1]]
    return mask


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
