"""Separable Legendre polynomial surfaces of pixel position, evaluated in float32.

A surface ``sum_ij C[i, j] P_i(y) P_j(x)`` is a product of per-axis tables,
``(Vy @ C) @ Vx.T``; :func:`evaluate_at` and :func:`correct_rows` evaluate it
term by term so that every pixel rounds the same whichever block of the image
is evaluated (the 2-D background fit, :mod:`segtool.background`, and its
big-image mode rely on this). :func:`legendre_table` gives the tables,
:func:`matmul_blocks` the large products of the fit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["legendre_table", "matmul_blocks", "evaluate_at", "correct_rows"]

# Multiply-adds per matrix product on large arrays (see matmul_blocks): below
# OpenBLAS's threading cutoff, and a block of rows that stays in cache.
_BLOCK_FLOPS = 1 << 17
# Pixels per block of rows when correcting the image: image, background,
# corrected and mask blocks stay in cache between the steps.
_BLOCK_PIXELS = 1 << 18


def legendre_table(positions: np.ndarray, n: int, degree: int) -> np.ndarray:
    """Legendre polynomials P_0..P_degree at pixel positions mapped onto [-1, 1].

    Parameters
    ----------
    positions : (m,) array_like of int
        Pixel indices along one axis.
    n : int
        Length of that axis: index 0 maps to -1 and ``n - 1`` to +1 (all to 0
        when ``n`` is 1).
    degree : int
        Highest degree.

    Returns
    -------
    table : (m, degree + 1) ndarray of float64
        ``table[i, d]`` = P_d at ``positions[i]``.

    Examples
    --------
    >>> legendre_table([0, 1, 2], 3, 2).tolist()
    [[1.0, -1.0, 1.0], [1.0, 0.0, -0.5], [1.0, 1.0, 1.0]]
    """
    t = (2.0 * np.asarray(positions, dtype=np.float64) / (n - 1) - 1.0) if n > 1 else np.zeros(len(positions))
    table = np.empty((len(t), degree + 1))
    table[:, 0] = 1.0
    if degree >= 1:
        table[:, 1] = t
    for m in range(1, degree):  # (m + 1) P_{m+1} = (2m + 1) t P_m - m P_{m-1}
        table[:, m + 1] = ((2 * m + 1) * t * table[:, m] - m * table[:, m - 1]) / (m + 1)
    return table


def correct_rows(
    coef: np.ndarray,
    image: np.ndarray,
    background: np.ndarray,
    corrected: np.ndarray,
    *,
    level: float | None = None,
    polarity: str = "bright",
    foreground: np.ndarray | None = None,
) -> tuple[float, float]:
    """Background, ``image - background`` and, if ``level`` is given, the object mask.

    One pass over the image in blocks of rows, so each block of background is
    still in cache when it is subtracted (and the difference when it is
    compared with ``level``). Returns the minimum and maximum of ``image``
    (NaN or inf if it holds any), gathered on the way.
    """
    height, width = image.shape
    left, right = _tables(coef, image.shape, np.arange(height), np.arange(width))
    block = max(1, _BLOCK_PIXELS // width)
    compare = np.greater if polarity == "bright" else np.less
    lows, highs = [], []
    for r0 in range(0, height, block):
        rows = slice(r0, min(r0 + block, height))
        _outer_sum(left[rows], right, background[rows])
        lows.append(image[rows].min())
        highs.append(image[rows].max())
        np.subtract(image[rows], background[rows], out=corrected[rows], dtype=np.float32, casting="unsafe")
        if foreground is not None:
            compare(corrected[rows], level, out=foreground[rows])
    return float(min(lows)), float(max(highs))


def _tables(
    coef: np.ndarray, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """float32 factors ``Vy @ C`` (rows, k) and ``Vx.T`` (k, cols) of the background.

    ``Vy @ C`` is summed term by term (see :func:`_outer_sum`), so a row's
    factor does not depend on which other rows are evaluated with it.
    """
    degree = coef.shape[0] - 1
    vy = legendre_table(rows, shape[0], degree)
    left = vy[:, :1] * coef[0]
    for i in range(1, degree + 1):
        left += vy[:, i : i + 1] * coef[i]
    right = np.ascontiguousarray(legendre_table(cols, shape[1], degree).T, dtype=np.float32)
    return left.astype(np.float32), right


def evaluate_at(coef: np.ndarray, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> None:
    """Background of an image of ``shape`` at ``rows`` x ``cols``, into float32 ``out``.

    Each pixel's value depends only on its position, not on the block
    evaluated, so any block of the image reproduces :func:`correct_rows`
    bit for bit (big-image mode relies on this).
    """
    left, right = _tables(coef, shape, rows, cols)
    _outer_sum(left, right, out)


def _outer_sum(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
    """``out = left @ right`` for float32 factors with few columns, term by term.

    A BLAS product rounds differently with the matrix sizes (its kernels and
    order of summation change with them: measured on OpenBLAS 0.3.31, most
    blocks of an image differed from the whole image in the last bit).
    Elementwise products and sums in a fixed order round every pixel alike,
    at ~2x the cost of the product (6 instead of 3 ms per 2048 x 2048 at degree 2).
    """
    k = left.shape[1]
    rows = max(1, _BLOCK_PIXELS // max(1, right.shape[1]))
    term = np.empty((min(rows, left.shape[0]), right.shape[1]), dtype=np.float32) if k > 1 else None
    for r0 in range(0, left.shape[0], rows):
        block, factor = out[r0 : r0 + rows], left[r0 : r0 + rows]
        np.multiply(factor[:, :1], right[:1], out=block)
        for m in range(1, k):
            scratch = term[: block.shape[0]]
            np.multiply(factor[:, m : m + 1], right[m : m + 1], out=scratch)
            block += scratch


def matmul_blocks(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` in blocks of rows of ``a``, each below OpenBLAS's threading cutoff.

    Returns ``out`` (allocated when None, of the two inputs' result dtype).

    OpenBLAS runs products above ~2**18 multiply-adds on all its threads; on a
    busy machine, waking them for a sub-millisecond product was measured to
    cost 10-100x the product itself. Blocks keep every call on one thread.
    """
    rows = max(1, _BLOCK_FLOPS // max(1, a.shape[1] * b.shape[1]))
    if out is None:
        if a.shape[0] <= rows:
            return a @ b
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for r0 in range(0, a.shape[0], rows):
        np.matmul(a[r0 : r0 + rows], b, out=out[r0 : r0 + rows])
    return out
