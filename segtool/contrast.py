"""The empty-image rule: when a threshold has found nothing but noise.

An automatic threshold always splits an image in two, even one that holds no
object: Otsu cuts pure noise at its mean, and the pixels above it form blobs
that pass any size filter. :func:`object_contrast` measures how far apart the
two classes a threshold made really are, in units of the image's noise, and
:data:`MIN_CONTRAST` is the separation below which ``segment_baseline`` calls
the image empty (0 objects) instead of labelling noise.

The noise is estimated from differences between horizontally neighbouring
pixels (median absolute deviation), which objects hardly touch: only their
edges change fast, and they are a small share of the pixels. This keeps the
estimate honest on crowded images, where the background-side spread of the
intensity histogram is inflated by the objects themselves.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_CONTRAST", "noise_sigma", "object_contrast", "is_featureless"]

#: Objects must differ from the background by at least this many noise sigmas
#: (difference of the two class means, see :func:`object_contrast`). Measured
#: on images of i.i.d. noise on a degree-2 background (Gaussian, Poisson, and
#: Poisson quantised to a few grey values): every method of ``segment_baseline``
#: separates them by 1.6 to 2.9 sigma; on the train split of the fluorescence
#: nuclei set, Otsu, Li and Yen separate every image by 13 sigma or more.
MIN_CONTRAST = 3.0

# Statistics are taken on at most about this many pixels (a regular subsample).
_SAMPLE_PIXELS = 1 << 18
# ... and the noise from about this many neighbour differences (a median of
# 2**16 values is within ~1 % of the population's).
_NOISE_PIXELS = 1 << 16
# 1.4826 turns a median absolute deviation into a normal sigma; a difference of
# two independent pixels has sqrt(2) times the pixel noise.
_MAD_TO_SIGMA = 1.4826 / math.sqrt(2.0)


def noise_sigma(image: np.ndarray) -> float:
    """Robust pixel-noise sigma from differences between horizontal neighbours.

    Parameters
    ----------
    image : (M, N) ndarray
        Image, ideally with its background removed (a smooth background
        changes neighbour differences very little either way).

    Returns
    -------
    sigma : float
        ``1.4826 * MAD(d) / sqrt(2)`` of the differences ``d`` between
        neighbouring pixels along rows (every k-th row, about 2**16 of them;
        along the column of an N x 1 image). 0 for a noiseless image or a
        single pixel.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(noise_sigma(rng.normal(0, 2, (200, 200))), 1)
    2.0
    """
    data = np.asarray(image)
    if data.ndim == 2 and data.shape[1] < 2:
        data = data.T  # an N x 1 image: neighbours along its only column
    if data.ndim != 2 or data.shape[1] < 2:
        return 0.0
    step = max(1, math.ceil(data.size / _NOISE_PIXELS))
    rows = np.asarray(data[step // 2 :: step], dtype=np.float32)
    diff = np.diff(rows, axis=1).ravel()
    diff -= np.median(diff)
    return float(_MAD_TO_SIGMA * np.median(np.abs(diff, out=diff)))


def object_contrast(values: np.ndarray, level: float, *, polarity: str = "bright", sigma: float | None = None) -> float:
    """Separation of the two classes a threshold makes, in noise sigmas.

    Parameters
    ----------
    values : (M, N) ndarray
        The thresholded image (background-corrected, smoothed if it was).
    level : float
        The threshold; objects are above it (``polarity="bright"``) or below it.
    polarity : {"bright", "dark"}, optional
        Side the objects are on.
    sigma : float, optional
        Noise sigma; default :func:`noise_sigma` of ``values``.

    Returns
    -------
    contrast : float
        ``|mean(objects) - mean(background)| / sigma`` over a regular
        subsample of at most about 2**18 pixels; ``inf`` for a noiseless image
        with both classes present, 0 when either class is empty.

    Examples
    --------
    >>> image = np.zeros((20, 20))
    >>> image[5:10, 5:10] = 10.0
    >>> object_contrast(image, 5.0)
    inf
    """
    data = np.asarray(values)
    sigma = noise_sigma(data) if sigma is None else float(sigma)
    step = max(1, math.ceil(math.sqrt(data.size / _SAMPLE_PIXELS)))
    sample, objects, n_objects = _classes(data, step, level, polarity)
    if step > 1 and n_objects in (0, sample.size):
        # A few small objects can fall between the subsample's pixels.
        sample, objects, n_objects = _classes(data, 1, level, polarity)
    if n_objects in (0, sample.size):
        return 0.0
    total = float(sample.sum(dtype=np.float64))
    inside = float(sample[objects].sum(dtype=np.float64))
    gap = abs(inside / n_objects - (total - inside) / (sample.size - n_objects))
    if sigma <= 0:
        return math.inf if gap > 0 else 0.0
    return gap / sigma


def _classes(data: np.ndarray, step: int, level: float, polarity: str):
    sample = data[step // 2 :: step, step // 2 :: step]
    objects = sample > level if polarity == "bright" else sample < level
    return sample, objects, int(np.count_nonzero(objects))


def is_featureless(values: np.ndarray, level: float, *, polarity: str = "bright") -> bool:
    """Whether thresholding ``values`` at ``level`` separates only noise (see :data:`MIN_CONTRAST`).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> noise = rng.normal(100, 5, (128, 128))
    >>> is_featureless(noise, float(np.mean(noise)))
    True
    >>> noise[40:60, 40:60] += 50
    >>> is_featureless(noise, 125.0)
    False
    """
    return object_contrast(values, level, polarity=polarity) < MIN_CONTRAST
