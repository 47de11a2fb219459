"""The normalisation stage's percentiles, one routine for every schedule.

Every schedule maps the same two image percentiles to 0 and 1; they differ
only in how the pixels reach the computation:

- in memory, all pixels at once (:func:`sample_percentiles`, called by
  :func:`segtool.normalize.normalize_percentile`);
- in bands, rows streamed from a file (:func:`stream_percentiles`);
- in Dask blocks, chunks reduced on the cluster (:func:`dask_percentiles`).

The two large-image paths are exact for integer images of up to 16 bits: a
histogram of every pixel, read with :func:`percentiles_from_counts` (the same
linear interpolation as :func:`numpy.percentile`). Other dtypes are sampled on
a regular grid (:func:`grid_step`) and passed to :func:`sample_percentiles`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from segtool.errors import InputError

__all__ = ["dask_percentiles", "grid_step", "percentiles_from_counts", "sample_percentiles", "stream_percentiles"]

#: Largest number of pixels :func:`dask_percentiles` samples from a float image (16 MB on the client).
DASK_MAX_SAMPLES = 2**22
#: Largest number of pixels :func:`stream_percentiles` samples from a float image.
STREAM_MAX_SAMPLES = 2**24


def sample_percentiles(sample: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile(sample, percentiles)``, refusing NaN and infinite values.

    Parameters
    ----------
    sample : ndarray
        All pixels of an image, or a subsample of them.
    percentiles : sequence of float
        In [0, 100].

    Returns
    -------
    values : ndarray
        As :func:`numpy.percentile` returns them (float32 for a float32 sample).

    Raises
    ------
    InputError
        If the sample holds NaN or infinite values.

    Examples
    --------
    >>> sample_percentiles(np.arange(5.0), [0, 50]).tolist()
    [0.0, 2.0]
    """
    if not np.isfinite(sample).all():
        raise InputError("image contains NaN or infinite values")
    return np.percentile(sample, percentiles)


def percentiles_from_counts(counts: np.ndarray, lowest: int, percentiles) -> tuple[float, ...]:
    """Linear-interpolation percentiles of integer values ``lowest + i`` seen ``counts[i]`` times.

    The same values :func:`numpy.percentile` gives on the pixels themselves,
    rounded to 10 decimals.

    Examples
    --------
    >>> percentiles_from_counts(np.array([1, 0, 3]), 10, [0, 50, 100])
    (10.0, 12.0, 12.0)
    """
    q = np.asarray(percentiles, dtype=np.float64) / 100.0
    cumulative = np.cumsum(counts, dtype=np.int64)
    n = int(cumulative[-1])
    position = q * (n - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    # The k-th smallest value (0-based) is the first bin whose running count exceeds k.
    v_below = np.searchsorted(cumulative, below, side="right").astype(np.float64) + lowest
    v_above = np.searchsorted(cumulative, above, side="right").astype(np.float64) + lowest
    return tuple(round(float(v), 10) for v in v_below + (position - below) * (v_above - v_below))


def grid_step(size: int, ndim: int, max_samples: int) -> int:
    """Step of the regular grid that samples at most ~``max_samples`` of ``size`` pixels on ``ndim`` axes.

    Examples
    --------
    >>> grid_step(100, 2, 25), grid_step(100, 2, 1000)
    (2, 1)
    """
    ratio = size / max(int(max_samples), 1)
    root = math.sqrt(ratio) if ndim == 2 else ratio ** (1.0 / ndim)
    return max(1, math.ceil(root))


def _exact_range(dtype: np.dtype) -> tuple[int, int] | None:
    """(lowest, highest) value of an integer dtype small enough for a full histogram, else None."""
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        return int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    return None


def stream_percentiles(
    read_rows: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    dtype,
    percentiles: Sequence[float],
    *,
    max_samples: int = STREAM_MAX_SAMPLES,
) -> tuple[float, ...]:
    """Percentiles of an image read in row chunks, without holding it all.

    For 8- and 16-bit integer images the result is exact (the same as
    ``np.percentile`` with linear interpolation, from a full histogram). For
    other dtypes it is computed on a regular grid subsample of at most
    ``max_samples`` pixels.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(start, stop)`` returns rows as a (rows, W) array.
    shape : (H, W)
    dtype : dtype of the rows
    percentiles : sequence of float
        In [0, 100].

    Returns
    -------
    values : tuple of float

    Raises
    ------
    InputError
        If the image holds NaN or infinite values.

    Examples
    --------
    >>> image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    >>> stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, [1, 99.8])
    (0.99, 98.802)
    """
    height, width = (int(n) for n in shape)
    dtype = np.dtype(dtype)
    chunk_rows = max(1, (1 << 22) // max(width, 1))
    exact = _exact_range(dtype)
    if exact is not None:
        lowest, highest = exact
        counts = np.zeros(highest - lowest + 1, np.int64)
        for chunk in _row_chunks(read_rows, height, chunk_rows):
            values = np.asarray(chunk).ravel()
            if lowest:
                values = values.astype(np.int32) - lowest
            counts += np.bincount(values, minlength=counts.size)
        return percentiles_from_counts(counts, lowest, percentiles)
    step = grid_step(height * width, 2, max_samples)
    rows_per_read = step * max(1, chunk_rows // step)  # a multiple of step keeps the sampling grid regular
    samples = [
        np.asarray(chunk)[::step, ::step].astype(np.float32).ravel()
        for chunk in _row_chunks(read_rows, height, rows_per_read)
    ]
    q = np.asarray(percentiles, dtype=np.float64) / 100.0
    return tuple(float(v) for v in sample_percentiles(np.concatenate(samples), q * 100))


def _row_chunks(read_rows: Callable[[int, int], np.ndarray], height: int, rows: int):
    for start in range(0, height, rows):
        yield read_rows(start, min(height, start + rows))


def dask_percentiles(image, percentiles, *, max_samples: int = DASK_MAX_SAMPLES) -> tuple[float, ...]:
    """Percentiles of a Dask array, computed by the cluster.

    Exact (linear interpolation, as :func:`numpy.percentile`) for boolean and
    integer images of up to 16 bits, from a histogram summed over the chunks
    (:func:`dask.array.histogram`). Other dtypes use a regular grid subsample
    of at most ``max_samples`` pixels (only the subsample reaches the client).

    Parameters
    ----------
    image : dask.array.Array
        Any shape.
    percentiles : sequence of float
        In [0, 100].
    max_samples : int, optional
        Subsample size for float and wide integer images.

    Returns
    -------
    values : tuple of float

    Raises
    ------
    InputError
        If the image is empty or its subsample holds NaN or infinite values.

    Examples
    --------
    >>> import dask.array as da
    >>> image = da.from_array(np.arange(100, dtype=np.uint8).reshape(10, 10), chunks=4)
    >>> dask_percentiles(image, [1, 99.8])
    (0.99, 98.802)
    """
    import dask.array as da

    q = np.asarray(percentiles, dtype=np.float64)
    if image.size == 0:
        raise InputError("image is empty")
    dtype = np.dtype(image.dtype)
    exact = (0, 1) if dtype.kind == "b" else _exact_range(dtype)
    if exact is not None:
        data = image.astype(np.uint8) if dtype.kind == "b" else image
        lowest, highest = exact
        # Integer values sit in the middle of unit-wide bins, so binning is exact.
        counts, _ = da.histogram(data, bins=highest - lowest + 1, range=(lowest - 0.5, highest + 0.5))
        return percentiles_from_counts(np.asarray(counts.compute()), lowest, q)
    step = grid_step(image.size, image.ndim, max_samples)
    sample = np.asarray(image[(slice(None, None, step),) * image.ndim].astype(np.float32).compute())
    return tuple(float(v) for v in sample_percentiles(sample, q))
