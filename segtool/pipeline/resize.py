"""A piece of a resized image, from a piece of the image: what block schedules need to honour ``scale``.

The in-memory schedule resizes the whole normalised image before the network
and the maps back after it (:func:`segtool.infer.sizing.resize_channels`:
bilinear, reflected at the border, a Gaussian blur of ``(f - 1) / 2``
input pixels first when shrinking by ``f``). A block of a large image only
has a window of it. :func:`resized_span` computes the output pixels of
that resize for one range of output rows and columns from the input pixels
around them, with the same arithmetic, so every block gets the whole
resize's values (to float rounding) and neighbouring blocks agree.
:func:`span_source` says which input pixels a range of output pixels needs.

Pure NumPy/SciPy; every range is one axis's ``(start, stop)``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RESIZE_COLUMNS", "blur_radius", "resized_rows", "resized_span", "span_source"]

#: Output columns :func:`resized_rows` computes at a time. Resizing a whole tile row of a wide image at once made
#: temporaries several times its size (the blur's and both interpolation passes' copies): at 8192^2 enlarged
#: 1.79x, about 0.5 GiB on top of the network's buffers (BENCHMARKS.md, "Band mode in bounded memory").
RESIZE_COLUMNS = 1024


def _sigma(n_in: int, n_out: int) -> float:
    """Anti-aliasing blur (input pixels) of a resize from ``n_in`` to ``n_out`` along one axis."""
    return max(0.0, (n_in / n_out - 1.0) / 2.0)


def blur_radius(n_in: int, n_out: int, shrinking: bool) -> int:
    """Half-width in input pixels of the anti-aliasing blur (SciPy's Gaussian at ``truncate=4``); 0 without it."""
    sigma = _sigma(n_in, n_out) if shrinking else 0.0
    return int(4.0 * sigma + 0.5) if sigma > 0 else 0


def _sources(n_in: int, n_out: int, start: int, stop: int) -> np.ndarray:
    """Input coordinate of each output pixel ``start..stop-1`` (pixel centres, as ``scipy.ndimage.zoom`` with ``grid_mode``)."""
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def span_source(n_in: int, n_out: int, start: int, stop: int, *, shrinking: bool) -> tuple[int, int]:
    """Input pixels ``(a, b)`` that output pixels ``start:stop`` of a resize ``n_in -> n_out`` depend on.

    Includes the two interpolation neighbours and the blur's reach, clipped
    to the image (the reflection at its border is made from pixels inside).

    Examples
    --------
    >>> span_source(100, 50, 10, 20, shrinking=True)
    (17, 43)
    >>> span_source(100, 100, 10, 20, shrinking=False)
    (10, 20)
    """
    if n_in == n_out:
        return start, stop
    coords = _sources(n_in, n_out, start, stop)
    reach = blur_radius(n_in, n_out, shrinking)
    # one more pixel each way: a reflected neighbour at the image border, and rounding of the coordinates
    a = int(math.floor(coords[0])) - 1 - reach
    b = int(math.floor(coords[-1])) + 3 + reach
    return max(0, a), min(n_in, b)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected about the first and last pixel (``scipy.ndimage`` mode "mirror")."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def resized_span(
    piece: np.ndarray,
    piece_start: tuple[int, int],
    full_in: tuple[int, int],
    full_out: tuple[int, int],
    out_start: tuple[int, int],
    out_stop: tuple[int, int],
    *,
    shrinking: bool,
) -> np.ndarray:
    """Output pixels ``out_start:out_stop`` of resizing a whole ``(C, *full_in)`` image to ``full_out``.

    Parameters
    ----------
    piece : (C, h, w) ndarray
        Input pixels from ``piece_start`` on; must cover
        :func:`span_source` of the requested output on each axis.
    piece_start : (int, int)
        Where ``piece`` lies in the whole input.
    full_in, full_out : (int, int)
        Sizes of the whole input and of the whole output.
    out_start, out_stop : (int, int)
        The output pixels wanted.
    shrinking : bool
        Blur before interpolating (as the whole resize does when either
        axis shrinks), with ``(f - 1) / 2`` input pixels on each shrinking axis.

    Returns
    -------
    (C, out_stop - out_start) ndarray of float32

    Examples
    --------
    The same values as resizing the whole image:

    >>> from segtool.infer.sizing import resize_channels
    >>> image = np.random.default_rng(0).random((1, 90, 70)).astype(np.float32)
    >>> whole = resize_channels(image, (37, 29))
    >>> (a0, b0), (a1, b1) = span_source(90, 37, 10, 20, shrinking=True), span_source(70, 29, 5, 29, shrinking=True)
    >>> part = resized_span(image[:, a0:b0, a1:b1], (a0, a1), (90, 70), (37, 29), (10, 5), (20, 29), shrinking=True)
    >>> float(np.abs(part - whole[:, 10:20, 5:29]).max()) < 1e-6
    True
    """
    from scipy import ndimage

    data = np.asarray(piece, dtype=np.float32)
    for axis in (0, 1):
        sigma = _sigma(full_in[axis], full_out[axis]) if shrinking else 0.0
        if sigma > 0:
            # the blur's edge effects at a cut (not the image border) stay in the margin span_source added
            data = ndimage.gaussian_filter1d(data, sigma, axis=axis + 1, mode="mirror")
    for axis in (0, 1):
        n_in, n_out = full_in[axis], full_out[axis]
        if n_in == n_out:
            index = np.arange(out_start[axis], out_stop[axis]) - piece_start[axis]
            data = np.take(data, index, axis=axis + 1)
            continue
        coords = _sources(n_in, n_out, out_start[axis], out_stop[axis])
        low = np.floor(coords).astype(np.int64)
        frac = (coords - low).astype(np.float32)
        first = np.take(data, _mirror(low, n_in) - piece_start[axis], axis=axis + 1)
        second = np.take(data, _mirror(low + 1, n_in) - piece_start[axis], axis=axis + 1)
        shape = [1, 1, 1]
        shape[axis + 1] = -1
        frac = frac.reshape(shape)
        data = first * (1 - frac) + second * frac
    return np.ascontiguousarray(data, dtype=np.float32)


def resized_rows(
    read_columns,
    piece_row: int,
    full_in: tuple[int, int],
    full_out: tuple[int, int],
    out_rows: tuple[int, int],
    *,
    shrinking: bool,
    columns: int = RESIZE_COLUMNS,
) -> np.ndarray:
    """Output rows ``out_rows`` of resizing a whole ``(C, *full_in)`` image to ``full_out``, all columns.

    :func:`resized_span` over blocks of ``columns`` output columns, each
    from the input columns it needs (:func:`span_source`), written into one
    output array: the same values as one call on the whole width (every
    output pixel is computed from the same input pixels by the same
    arithmetic), while the temporaries stay the size of one block.

    Parameters
    ----------
    read_columns : callable
        ``read_columns(a, b)`` returns input columns ``a:b`` of the input rows
        from ``piece_row`` on, as ``(C, h, b - a)``; the rows must cover
        :func:`span_source` of ``out_rows``.
    piece_row : int
        The first input row ``read_columns`` returns.
    full_in, full_out : (int, int)
        Sizes of the whole input and of the whole output.
    out_rows : (int, int)
        The output rows wanted.
    shrinking : bool
        As :func:`resized_span`.
    columns : int, optional
        Output columns per block.

    Returns
    -------
    (C, out_rows[1] - out_rows[0], full_out[1]) ndarray of float32

    Examples
    --------
    >>> image = np.random.default_rng(0).random((2, 60, 50)).astype(np.float32)
    >>> a, b = span_source(60, 33, 5, 20, shrinking=True)
    >>> whole = resized_span(image[:, a:b], (a, 0), (60, 50), (33, 21), (5, 0), (20, 21), shrinking=True)
    >>> blocks = resized_rows(lambda c0, c1: image[:, a:b, c0:c1], a, (60, 50), (33, 21), (5, 20), shrinking=True,
    ...                       columns=4)
    >>> blocks.shape, bool(np.array_equal(blocks, whole))
    ((2, 15, 21), True)
    """
    start, stop = (int(n) for n in out_rows)
    out = None
    for first in range(0, int(full_out[1]), max(1, int(columns))):
        last = min(int(full_out[1]), first + max(1, int(columns)))
        a, b = span_source(full_in[1], full_out[1], first, last, shrinking=shrinking)
        block = resized_span(read_columns(a, b), (piece_row, a), full_in, full_out, (start, first), (stop, last),
                             shrinking=shrinking)
        if out is None:
            out = np.empty((block.shape[0], stop - start, int(full_out[1])), np.float32)
        out[:, :, first:last] = block
    return out
