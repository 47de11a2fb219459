"""Polynomial background of a Z stack: a robust least-squares Legendre fit in (z, y, x).

The 3-D form of :mod:`segtool.background`: the background is a polynomial of
total degree ``degree`` in the voxel position, written in the Legendre basis
``P_i(z) P_j(y) P_k(x)`` (positions mapped onto [-1, 1] along each axis), fitted
on a regular subsample of about 2**17 voxels. The robust fit refits without
the voxels far on the object side, as in 2-D. The surface is evaluated plane
by plane as a small matrix product, in float32.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.background import inliers_from_sample
from segtool.legendre import legendre_table
from segtool.errors import InputError

__all__ = ["BackgroundFit3D", "fit_background_3d"]

_MAX_DEGREE = 10
# Voxels in the fitting grid: a smooth surface of <= 286 terms is well determined by this many.
_FIT_VOXELS = 1 << 17
# Robust rounds and convergence, as in 2-D (the clip is the 2-D fit's: background.inliers_from_sample).
_ROBUST_ROUNDS = 5
_CONVERGED = 0.02


@dataclass(frozen=True, eq=False)
class BackgroundFit3D:
    """A polynomial background fitted by :func:`fit_background_3d`.

    Attributes
    ----------
    coefficients : (d + 1, d + 1, d + 1) ndarray of float64
        ``coefficients[i, j, k]`` multiplies ``P_i(z) P_j(y) P_k(x)``; zero
        where ``i + j + k > degree``.
    degree : int
    shape : tuple of int
        (Z, Y, X) of the fitted stack.
    fit_voxels, used_voxels, rounds : int
        Voxels in the fitting grid, voxels used by the last fit, fits done.
    """

    coefficients: np.ndarray
    degree: int
    shape: tuple[int, int, int]
    fit_voxels: int = 0
    used_voxels: int = 0
    rounds: int = 1

    def evaluate_plane(self, z: int) -> np.ndarray:
        """Background of plane ``z``, (Y, X) float32.

        Examples
        --------
        >>> fit = fit_background_3d(np.full((3, 4, 5), 2.0), degree=0)
        >>> float(fit.evaluate_plane(1)[0, 0])
        2.0
        """
        depth, height, width = self.shape
        pz = legendre_table(np.array([z]), depth, self.degree)[0]
        matrix = np.tensordot(pz, self.coefficients, axes=(0, 0))  # (j, k)
        vy = legendre_table(np.arange(height), height, self.degree)
        vx = legendre_table(np.arange(width), width, self.degree)
        return ((vy @ matrix) @ vx.T).astype(np.float32)

    def evaluate(self) -> np.ndarray:
        """Background of the whole stack, (Z, Y, X) float32."""
        out = np.empty(self.shape, dtype=np.float32)
        for z in range(self.shape[0]):
            out[z] = self.evaluate_plane(z)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-safe description: degree, shape, voxels, rounds and the range over the stack's corners and centre."""
        corners = [self.evaluate_plane(z)[[0, -1, self.shape[1] // 2]][:, [0, -1, self.shape[2] // 2]]
                   for z in (0, self.shape[0] // 2, self.shape[0] - 1)]
        values = np.stack(corners)
        return {
            "degree": self.degree,
            "shape": [int(v) for v in self.shape],
            "min": float(f"{values.min():.6g}"),
            "max": float(f"{values.max():.6g}"),
            "fit_voxels": int(self.fit_voxels),
            "used_voxels": int(self.used_voxels),
            "rounds": int(self.rounds),
        }


def fit_background_3d(
    image: np.ndarray, *, degree: int = 2, robust: bool = True, polarity: str = "bright"
) -> BackgroundFit3D:
    """Fit a least-squares polynomial of voxel position (z, y, x) to a stack.

    Parameters
    ----------
    image : (Z, Y, X) array_like
        Grayscale stack of any real dtype.
    degree : int, optional
        Total degree (0..10).
    robust : bool, optional
        Refit up to 5 times without the voxels more than 2.5 robust standard
        deviations from the background on the object side.
    polarity : {"bright", "dark", "auto"}, optional
        Side the objects are on (``"auto"``: both sides are clipped).

    Returns
    -------
    BackgroundFit3D

    Raises
    ------
    InputError
        For a stack that is not 3-D, empty, not real or not finite on the
        fitting grid; a bad degree or polarity.

    Notes
    -----
    Positions along each axis are mapped onto [-1, 1] by index, so the fit does
    not depend on the anisotropy: a polynomial of degree d in z stays one
    whatever the z spacing.

    Examples
    --------
    >>> z, y, x = np.indices((4, 5, 6), dtype=float)
    >>> fit = fit_background_3d(1 + z + 2 * y - x, degree=1)
    >>> bool(np.allclose(fit.evaluate(), 1 + z + 2 * y - x, atol=1e-4))
    True
    """
    data = np.asarray(image)
    if data.ndim != 3 or data.size == 0:
        raise InputError(f"stack must be 3-D (Z, Y, X) and not empty, got shape {data.shape}")
    if data.dtype.kind not in "uifb":
        raise InputError(f"stack must hold real numbers, got dtype {data.dtype}")
    if isinstance(degree, bool) or not isinstance(degree, numbers.Integral) or not 0 <= degree <= _MAX_DEGREE:
        raise InputError(f"degree must be an integer from 0 to {_MAX_DEGREE}, got {degree!r}")
    if polarity not in ("bright", "dark", "auto"):
        raise InputError(f"polarity must be one of bright, dark, auto, got {polarity!r}")
    steps = _steps(data.shape)
    index = [np.arange(s // 2, n, s) for s, n in zip(steps, data.shape)]
    grid = np.asarray(data[np.ix_(*index)], dtype=np.float64).reshape(-1)
    if not np.isfinite(grid).all():
        raise InputError("image contains NaN or infinite values")
    tables = [legendre_table(i, n, degree) for i, n in zip(index, data.shape)]
    terms = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    design = np.empty((grid.size, len(terms)))
    for col, (i, j, k) in enumerate(terms):
        design[:, col] = np.einsum("a,b,c->abc", tables[0][:, i], tables[1][:, j], tables[2][:, k]).reshape(-1)
    keep = np.ones(grid.size, dtype=bool)
    coef = _solve(design, grid, keep)
    rounds = 1
    if robust:
        scale = float(grid.max() - grid.min())
        for _ in range(_ROBUST_ROUNDS - 1):
            residual = grid - design @ coef
            found = _inliers(residual, keep, polarity, scale)
            if found is None:
                break
            new_keep, sigma = found
            if new_keep.sum() < max(4 * len(terms), 16) or np.array_equal(new_keep, keep):
                break
            keep = new_keep
            previous, coef = coef, _solve(design, grid, keep)
            rounds += 1
            if np.abs(coef - previous).sum() <= _CONVERGED * sigma:
                break
    full = np.zeros((degree + 1,) * 3)
    for value, (i, j, k) in zip(coef, terms):
        full[i, j, k] = value
    return BackgroundFit3D(full, int(degree), tuple(int(n) for n in data.shape), int(grid.size), int(keep.sum()), rounds)


def _solve(design: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    a = design[keep]
    scale = np.sqrt((a * a).sum(axis=0))
    scale[scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(a / scale, values[keep], rcond=None)
    return coef / scale


def _inliers(residual: np.ndarray, keep: np.ndarray, side: str, scale: float):
    """Voxels within 2.5 robust sigmas of the background on the object side, and sigma."""
    return inliers_from_sample(residual, residual[keep], side, scale)


def _steps(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Steps along (z, y, x) so the fitting grid has about _FIT_VOXELS voxels, from at least 32 planes (or all)."""
    depth, height, width = shape
    if depth * height * width <= _FIT_VOXELS:
        return 1, 1, 1
    sz = max(1, depth // 32)
    planes = math.ceil(depth / sz)
    s = max(1, math.ceil(math.sqrt(planes * height * width / _FIT_VOXELS)))
    return sz, min(s, height), min(s, width)
