"""Polynomial background of an image, fitted by least squares.

The background is a least-squares polynomial of pixel position, fitted in a
Legendre basis (well conditioned up to high degree) on a regular subsample of
the pixels. Because every basis function is a product ``P_i(y) * P_j(x)``, the
normal equations are sums of separable products and reduce to small matrix
products with per-axis tables; no pixels-by-terms design matrix is built. The
fitted surface is evaluated separably (an ``(H, k) @ (k, W)`` product) in
float32.

The robust fit (default) repeats the fit without pixels whose residual lies far
on the object side, so bright nuclei do not lift the background.
:mod:`segtool.baseline` thresholds and labels the corrected image.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.checks import check_choice, check_shape
from segtool.errors import InputError
from segtool.legendre import correct_rows, evaluate_at, legendre_table, matmul_blocks

__all__ = [
    "POLARITIES",
    "BackgroundFit",
    "fit_background",
    "subtract_background",
    "check_degree",
    "check_image",
    "finite_range",
    "fit_grid",
    "fit_steps",
    "fitting_grid",
    "grid_residuals",
    "check_layout",
    "inliers_from_sample",
]

#: Values accepted by ``polarity=``.
POLARITIES: tuple[str, ...] = ("bright", "dark", "auto")

# Largest polynomial degree accepted. The fit costs ~(degree + 1)**2 products per
# fitting pixel; a background that needs more than this is not smooth background.
_MAX_DEGREE = 20
# The background is fitted on every s-th row and column, with s chosen so that
# at most about this many pixels are used. A smooth surface with a few dozen
# terms is determined to ~1 % of the noise by 2**16 pixels; more only costs time
# (each robust round touches every fitting pixel several times). Train-split F1
# was the same with 2**18.
_FIT_PIXELS = 1 << 16
# Robust fit: at most this many fits; pixels further than _CLIP robust standard
# deviations from the background on the object side are left out of the next one.
_ROBUST_ROUNDS = 5
_CLIP = 2.5
# ... and stop early once a refit moves the background by less than this many sigmas.
_CONVERGED = 0.02
# The robust spread is measured on at most this many fitting pixels.
_STAT_PIXELS = 1 << 14


@dataclass(frozen=True, eq=False)
class BackgroundFit:
    """A polynomial background fitted by :func:`fit_background`.

    Attributes
    ----------
    coefficients : (degree + 1, degree + 1) ndarray of float64
        ``coefficients[i, j]`` multiplies ``P_i(y) * P_j(x)``, where ``P_n`` is
        the Legendre polynomial of degree ``n`` and ``y``, ``x`` are pixel
        positions mapped linearly onto [-1, 1] (first row/column to -1, last to
        +1). Entries with ``i + j > degree`` are zero.
    degree : int
        Total degree of the polynomial.
    shape : tuple of int
        Shape ``(H, W)`` of the image that was fitted.
    fit_pixels : int
        Pixels in the fitting grid (every ``step``-th row and column).
    used_pixels : int
        Pixels of that grid used by the last fit (the rest were masked out by
        ``mask`` or left out as objects by the robust fit).
    rounds : int
        Number of least-squares fits done (1 without ``robust``).
    step : tuple of int
        Row and column step of the fitting grid.
    """

    coefficients: np.ndarray
    degree: int
    shape: tuple[int, int]
    fit_pixels: int = 0
    used_pixels: int = 0
    rounds: int = 1
    step: tuple[int, int] = (1, 1)

    def evaluate(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Evaluate the background on a pixel grid.

        Parameters
        ----------
        shape : tuple of int, optional
            Grid shape ``(H, W)``; default the fitted image's shape. A
            different shape spans the same [-1, 1] square, i.e. the background
            stretched to the new grid (handy for a preview at lower resolution).

        Returns
        -------
        background : (H, W) ndarray of float32

        Examples
        --------
        >>> fit = fit_background(np.full((3, 4), 7.0), degree=0)
        >>> fit.evaluate().tolist()[0]
        [7.0, 7.0, 7.0, 7.0]
        """
        shape = self.shape if shape is None else check_shape(shape, 2)
        out = np.empty(shape, dtype=np.float32)
        evaluate_at(self.coefficients, shape, np.arange(shape[0]), np.arange(shape[1]), out)
        return out

    def summary(self) -> dict[str, Any]:
        """Short JSON-safe description of the fit.

        ``mean``, ``min``, ``max`` and ``range`` are those of the background
        over the image, computed on a grid of at most 257 x 257 pixel positions
        that includes the four corners (exact for ``min``/``max`` when the
        extremes are at the corners, as for a plane).

        Returns
        -------
        summary : dict
            ``degree``, ``shape``, ``mean``, ``min``, ``max``, ``range``,
            ``fit_pixels``, ``used_pixels``, ``rounds`` and ``coefficients``
            (Legendre coefficients to 6 significant digits as a triangle:
            ``coefficients[i][j]`` multiplies ``P_i(y) * P_j(x)``).

        Examples
        --------
        >>> fit_background(np.full((4, 4), 2.5), degree=1).summary()["mean"]
        2.5
        """
        rows = _preview_positions(self.shape[0])
        cols = _preview_positions(self.shape[1])
        left = legendre_table(rows, self.shape[0], self.degree) @ self.coefficients
        values = matmul_blocks(left, legendre_table(cols, self.shape[1], self.degree).T)
        lo, hi = float(values.min()), float(values.max())
        d = self.degree
        return {
            "degree": d,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "mean": _round(float(values.mean())),
            "min": _round(lo),
            "max": _round(hi),
            "range": _round(hi - lo),
            "fit_pixels": int(self.fit_pixels),
            "used_pixels": int(self.used_pixels),
            "rounds": int(self.rounds),
            "coefficients": [[_round(float(self.coefficients[i, j])) for j in range(d + 1 - i)] for i in range(d + 1)],
        }


def fit_background(
    image: np.ndarray,
    *,
    degree: int = 2,
    robust: bool = True,
    mask: np.ndarray | None = None,
    polarity: str = "bright",
) -> BackgroundFit:
    """Fit a least-squares polynomial of pixel position to an image.

    Parameters
    ----------
    image : (H, W) array_like
        Grayscale image of any real dtype.
    degree : int, optional
        Total degree of the polynomial (0 = constant, 1 = plane, 2 = the
        default, a smooth bowl or saddle; up to 20).
    robust : bool, optional
        Refit, each time leaving out the pixels whose residual lies more than
        2.5 robust standard deviations from the current background on the
        object side, so objects do not pull the background towards them (at
        most 5 fits; it stops once a refit moves the background by less than
        0.02 standard deviations). ``False`` gives the plain one-shot
        least-squares fit.
    mask : (H, W) array_like of bool, optional
        Pixels that may be used for the fit (True); default all.
    polarity : {"bright", "dark", "auto"}, optional
        Side of the background the objects are on. ``"auto"`` leaves out
        outliers on both sides.

    Returns
    -------
    fit : BackgroundFit
        Call ``fit.evaluate()`` for the background image.

    Raises
    ------
    InputError
        If ``image`` is not 2-D, is empty, not real-valued, or holds NaN or
        infinite values; if ``degree`` is not an integer from 0 to 20; if
        ``mask`` has another shape or selects no pixel; if ``polarity`` is
        unknown.

    Notes
    -----
    Positions are mapped to [-1, 1] and the basis is the Legendre products
    ``P_i(y) P_j(x)`` with ``i + j <= degree``; on a regular grid these are
    nearly orthogonal, so even degree 10 fits are well conditioned.

    Images over 2**16 pixels are fitted on every s-th row and column (s
    chosen so that at most about 2**16 pixels are used). With 0/1 weights
    ``M`` on that grid and per-axis tables ``Vy``, ``Vx``, the right-hand side of the normal
    equations is ``Vy.T @ (M * Z) @ Vx`` and the Gram matrix is the small
    product ``Ay.T @ M @ Ax`` of the per-axis tables of basis products, so the
    cost is a few passes over the fitting grid whatever the degree.

    The robust spread is measured on the side away from the objects (for
    bright objects: median minus lower quartile of the residuals of the
    pixels in use, or a wider quantile when quantised data make those equal),
    which objects hardly touch, so one or two refits already drop them.

    Examples
    --------
    >>> plane = np.add.outer(np.arange(3.0), 2 * np.arange(4.0))
    >>> fit = fit_background(plane, degree=1)
    >>> bool(np.allclose(fit.evaluate(), plane, atol=1e-5))
    True
    """
    data = check_image(image)
    degree = check_degree(degree)
    polarity = check_choice(polarity, POLARITIES, "polarity")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise InputError(f"mask shape {mask.shape} does not match image shape {data.shape}")
        mask = mask.astype(bool, copy=False)
    return _fit(data, degree, robust=bool(robust), mask=mask, side=polarity)


def subtract_background(image: np.ndarray, *, degree: int = 2, robust: bool = True) -> np.ndarray:
    """Subtract a least-squares polynomial of pixel position.

    Parameters
    ----------
    image : (H, W) array_like
        Grayscale image of any real dtype; bright objects, if any.
    degree : int, optional
        Total degree of the polynomial.
    robust : bool, optional
        Leave bright outliers out of the fit (see :func:`fit_background`).

    Returns
    -------
    corrected : (H, W) ndarray of float32
        ``image`` minus the fitted background.

    Raises
    ------
    InputError
        As :func:`fit_background`.

    Examples
    --------
    >>> ramp = np.add.outer(np.arange(4.0), np.arange(4.0))
    >>> bool(np.allclose(subtract_background(ramp, degree=1), 0, atol=1e-5))
    True
    """
    data = check_image(image, scan=False)  # NaN/Inf are caught in the pass below
    fit = _fit(data, check_degree(degree), robust=bool(robust), mask=None, side="bright")
    background = np.empty(data.shape, dtype=np.float32)
    corrected = np.empty(data.shape, dtype=np.float32)
    lo, hi = correct_rows(fit.coefficients, data, background, corrected)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("image contains NaN or infinite values")
    return corrected


# --------------------------------------------------------------------------- fit


def _fit(data: np.ndarray, degree: int, *, robust: bool, mask: np.ndarray | None, side: str) -> BackgroundFit:
    """Least-squares fit on the subsample grid; robust rounds if asked."""
    step = fit_steps(*data.shape)
    allowed = None if mask is None else np.ascontiguousarray(fitting_grid(mask, step))
    return fit_grid(fitting_grid(data, step), data.shape, degree, robust=robust, allowed=allowed, side=side)


def fitting_grid(data: Any, step: tuple[int, int]) -> Any:
    """Every ``step``-th row and column of ``data``, from the middle of the first step.

    A strided view, so for a lazy (dask) image only this grid is gathered.
    """
    sy, sx = step
    return data[sy // 2 :: sy, sx // 2 :: sx]


def fit_grid(
    grid: Any,
    shape: tuple[int, int],
    degree: int,
    *,
    robust: bool,
    allowed: np.ndarray | None,
    side: str,
) -> BackgroundFit:
    """The fit of :func:`_fit` from the fitting grid of an image of ``shape``.

    ``grid`` is ``fitting_grid(image, fit_steps(*shape))`` (already gathered
    when the image is not in memory) and ``allowed`` the caller's mask on it.
    """
    height, width = shape
    sy, sx = fit_steps(height, width)
    rows, cols = np.arange(sy // 2, height, sy), np.arange(sx // 2, width, sx)
    # float64 for the sums over up to ~2**16 pixels; the grid is small.
    z = np.asarray(grid, dtype=np.float64)
    if not np.isfinite(z).all():
        raise InputError("image contains NaN or infinite values")
    vy = legendre_table(rows, height, degree)
    vx = legendre_table(cols, width, degree)
    if allowed is not None and not allowed.any():
        raise InputError("mask selects no pixel of the fitting grid")
    solver = _NormalEquations(vy, vx, degree)
    weights = allowed
    coef = solver.solve(z, weights)
    used = z.size if weights is None else int(np.count_nonzero(weights))
    rounds = 1
    if robust:
        # Fewer pixels than this and the fit is no longer determined by the background.
        min_pixels = max(4 * solver.n_terms, 16)
        # Residuals below this are float rounding, not noise (see _inliers).
        scale = float(z.max() - z.min())
        for _ in range(_ROBUST_ROUNDS - 1):
            residual = z - matmul_blocks(vy @ coef, vx.T)
            # Every grid pixel is tested against the current fit, so a pixel left
            # out early (when the fit was still lifted by objects) can come back.
            found = _inliers(residual, weights, side, scale)
            if found is None:
                break
            keep, sigma = found
            if allowed is not None:
                keep &= allowed
            n_keep = int(np.count_nonzero(keep))
            if n_keep < min_pixels:
                break
            if (n_keep == z.size and weights is None) or (weights is not None and np.array_equal(keep, weights)):
                break  # converged: the next fit would be the same
            weights, used = keep, n_keep
            previous, coef = coef, solver.solve(z, weights)
            rounds += 1
            # |P_n| <= 1 on [-1, 1], so the summed coefficient change bounds the
            # largest change of the background: stop once it is far below the noise.
            if np.abs(coef - previous).sum() <= _CONVERGED * sigma:
                break
    return BackgroundFit(
        coefficients=coef,
        degree=degree,
        shape=(height, width),
        fit_pixels=int(z.size),
        used_pixels=int(used),
        rounds=rounds,
        step=(sy, sx),
    )


class _NormalEquations:
    """Separable normal equations of the Legendre-product basis on a grid."""

    def __init__(self, vy: np.ndarray, vx: np.ndarray, degree: int) -> None:
        k = degree + 1
        self.k = k
        self.vy, self.vx = vy, vx
        # Terms P_i(y) P_j(x) with i + j <= degree.
        self.ti, self.tj = (a.ravel() for a in np.indices((k, k)))
        keep = self.ti + self.tj <= degree
        self.ti, self.tj = self.ti[keep], self.tj[keep]
        self.n_terms = int(keep.sum())
        # Per-axis tables of products P_i P_i' for the weighted Gram matrix.
        self.ay = (vy[:, :, None] * vy[:, None, :]).reshape(len(vy), k * k)
        self.ax = (vx[:, :, None] * vx[:, None, :]).reshape(len(vx), k * k)
        # Unweighted Gram matrix: a Kronecker-like product of the per-axis Grams.
        gy, gx = vy.T @ vy, vx.T @ vx
        self.gram_all = gy[np.ix_(self.ti, self.ti)] * gx[np.ix_(self.tj, self.tj)]

    def solve(self, z: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        k, ti, tj = self.k, self.ti, self.tj
        if weights is None:
            gram = self.gram_all
            rhs = self.vy.T @ matmul_blocks(z, self.vx)
        else:
            w = weights.astype(np.float64)
            rhs = self.vy.T @ matmul_blocks(w * z, self.vx)
            q = matmul_blocks(self.ay.T, matmul_blocks(w, self.ax)).reshape(k, k, k, k)  # q[i, i', j, j']
            gram = q[ti[:, None], ti[None, :], tj[:, None], tj[None, :]]
        b = rhs[ti, tj]
        # Scale to unit diagonal first: lstsq's cutoff then treats every term alike.
        scale = np.sqrt(np.diag(gram))
        scale[scale == 0] = 1.0
        c, *_ = np.linalg.lstsq(gram / np.outer(scale, scale), b / scale, rcond=None)
        coef = np.zeros((k, k))
        coef[ti, tj] = c / scale
        return coef


def _inliers(
    residual: np.ndarray, weights: np.ndarray | None, side: str, scale: float
) -> tuple[np.ndarray, float] | None:
    """Pixels within _CLIP robust sigmas of the background on the object side, and sigma.

    The centre and spread come from the pixels in ``weights`` (all if None);
    None means there are too few pixels left to tell.
    """
    stride = max(1, math.isqrt(residual.size // _STAT_PIXELS))
    sample = residual[::stride, ::stride]
    if weights is not None:
        sample = sample[weights[::stride, ::stride]]
    return inliers_from_sample(residual, sample, side, scale)


def inliers_from_sample(
    residual: np.ndarray, sample: np.ndarray, side: str, scale: float
) -> tuple[np.ndarray, float] | None:
    """Values of ``residual`` within 2.5 robust sigmas of the background, judged from ``sample``.

    Shared by the 2-D and 3-D background fits.

    Parameters
    ----------
    residual : ndarray
        Image (or stack) minus the current background estimate.
    sample : ndarray
        The residuals the centre and spread are taken from.
    side : {"bright", "dark", "both"}
        Where the objects are: the spread is read from the other side.
    scale : float
        The image's intensity range (a floor for a noiseless background).

    Returns
    -------
    (inliers, sigma) or None
        A boolean mask like ``residual`` and the robust sigma; None when the
        sample holds fewer than 8 values.
    """
    if sample.size < 8:
        return None
    q = np.percentile(sample, [2.5, 10, 25, 50, 75, 90, 97.5])
    center = q[3]
    # Spread from the side the objects are not on, from the quartile if it
    # differs from the median, else from wider quantiles (quantised data, e.g. a
    # uint8 background that is mostly one grey value). 0.6745, 1.2816, 1.96 are
    # the normal quantiles at 25, 10 and 2.5 %.
    sigma = 0.0
    for k, z in enumerate((0.6745, 1.2816, 1.96)):
        if side == "bright":
            sigma = (center - q[2 - k]) / z
        elif side == "dark":
            sigma = (q[4 + k] - center) / z
        else:
            sigma = (q[4 + k] - q[2 - k]) / (2 * z)
        if sigma > 0:
            break
    # A noiseless background: anything off it by more than rounding (1e-6 of
    # the image's range) is object.
    limit = max(_CLIP * float(sigma), 1e-6 * scale)
    if side == "bright":
        return residual <= center + limit, limit / _CLIP
    if side == "dark":
        return residual >= center - limit, limit / _CLIP
    return np.abs(residual - center) <= limit, limit / _CLIP


def fit_steps(height: int, width: int) -> tuple[int, int]:
    """Row and column steps so the fitting grid holds about _FIT_PIXELS pixels."""
    n = height * width
    if n <= _FIT_PIXELS:
        return 1, 1
    s = math.ceil(math.sqrt(n / _FIT_PIXELS))
    if s <= height:
        return s, min(s, width)
    # Fewer rows than s: keep every row and thin the columns only.
    return 1, min(width, math.ceil(n / _FIT_PIXELS))


def grid_residuals(grid: Any, fit: BackgroundFit) -> np.ndarray:
    """Image minus background on the fitting grid (float64); ``grid`` is ``fitting_grid(image, fit.step)``."""
    height, width = fit.shape
    sy, sx = fit.step
    rows, cols = np.arange(sy // 2, height, sy), np.arange(sx // 2, width, sx)
    z = np.asarray(grid, dtype=np.float64)
    return z - matmul_blocks(legendre_table(rows, height, fit.degree) @ fit.coefficients, legendre_table(cols, width, fit.degree).T)


def _preview_positions(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, 257)).round().astype(np.int64))


# -------------------------------------------------------------------- validation


def check_image(image: Any, *, scan: bool = True) -> np.ndarray:
    """2-D real array (float16 widened to float32); ``scan`` also rejects NaN/Inf."""
    data = np.asarray(image)
    check_layout(data)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    if scan and np.issubdtype(data.dtype, np.floating):
        finite_range(data)
    return data


def check_layout(data: Any) -> None:
    """InputError unless ``data`` (an ndarray or a lazy array) is 2-D, not empty and real-valued."""
    if data.ndim != 2:
        raise InputError(f"image must be 2-D (Y, X), got {data.ndim}-D with shape {data.shape}")
    if data.size == 0:
        raise InputError(f"image is empty (shape {data.shape})")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating) or data.dtype == bool):
        raise InputError(f"image must hold real numbers, got dtype {data.dtype}")


def finite_range(data: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum; InputError for NaN or inf (min/max propagate NaN)."""
    lo, hi = float(data.min()), float(data.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("image contains NaN or infinite values")
    return lo, hi


def check_degree(degree: Any) -> int:
    """Validate a polynomial degree.

    Parameters
    ----------
    degree : int
        Polynomial degree, 0 to the supported maximum.

    Returns
    -------
    degree : int

    Raises
    ------
    InputError
        If ``degree`` is not an integer in range.
    """
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or not 0 <= degree <= _MAX_DEGREE:
        raise InputError(f"degree must be an integer from 0 to {_MAX_DEGREE}, got {degree!r}")
    return int(degree)


def _round(value: float) -> float:
    return float(f"{value:.6g}")

