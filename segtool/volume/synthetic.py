"""Synthetic 3-D fluorescence nuclei stacks with exact ground-truth labels.

The 3-D counterpart of :mod:`segtool.synthetic`, for tests and benchmarks:
ellipsoidal nuclei of varied size and orientation (some touching) in a
(Z, Y, X) stack sampled more coarsely along z than in x and y, blurred by a
point-spread function that is longer along z, lit unevenly in x, y and z, with
shot and read noise, in detector counts. Deterministic given ``seed``.

Image model, in counts::

    image = OFFSET + noise(I(z, y, x) * (BACKGROUND + PSF * nuclei))

``I`` is the illumination field (1 at its brightest): a gradient across x-y
times an attenuation with depth, as light is lost deeper in a sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from segtool.checks import check_count, check_nonnegative, check_positive, check_shape
from segtool.errors import InputError
from segtool.labels import label_dtype
from segtool.synthetic import (
    background_counts,
    camera_image,
    check_image_dtype,
    check_radius_range,
    check_touching,
    paint_nucleus,
    renumber_present,
)

__all__ = ["ILLUMINATIONS_3D", "make_nuclei_stack", "make_background_stack"]

#: Values accepted by ``illumination=``.
ILLUMINATIONS_3D: tuple[str, ...] = ("uneven", "none")

# Camera offset, background, nucleus brightness and read noise: the 2-D
# generator's detector (segtool.synthetic.camera_image and paint_nucleus).
# PSF Gaussian sigmas in x-y pixel units: a widefield/confocal PSF is 2-3x
# longer along the optical axis than across it.
_PSF_SIGMA_XY = 1.0
_PSF_SIGMA_Z = 2.5
# Gap (x-y pixel units) kept between nuclei that are not meant to touch.
_GAP = 3.0
_ATTEMPTS = 60

Nucleus = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # centre (zyx, physical), axes (3x3 rows), semi-axes, brightness


def make_nuclei_stack(
    shape: tuple[int, int, int] = (64, 256, 256),
    *,
    z_spacing: float = 2.0,
    n_nuclei: int = 40,
    seed: int = 0,
    illumination: str = "uneven",
    noise: float = 1.0,
    radius_range: tuple[float, float] = (7.0, 12.0),
    touching: float = 0.3,
    dtype: str = "uint16",
) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic 3-D fluorescence stack of nuclei and its label stack.

    Parameters
    ----------
    shape : tuple of int, optional
        Stack shape ``(Z, Y, X)`` in voxels.
    z_spacing : float, optional
        Voxel size along z divided by the size in x and y (2 = planes twice as
        far apart as pixels). Nuclei are round in physical space, so they span
        fewer planes than pixels.
    n_nuclei : int, optional
        Nuclei to place; fewer when they do not fit (check ``labels.max()``).
    seed : int, optional
        The same arguments give the same arrays.
    illumination : {"uneven", "none"}, optional
        ``"uneven"``: a gradient across x-y falling from 1 to about 0.45 in a
        random direction, times a fall with depth from 1 at the first plane to
        0.6 at the last. ``"none"``: flat.
    noise : float, optional
        0 = noiseless; 1 = Poisson shot noise plus Gaussian read noise of 3
        counts; larger values scale both standard deviations.
    radius_range : (float, float), optional
        Range of nucleus radii (geometric mean of the semi-axes) in x-y pixel
        units. Semi-axes differ by up to 1.4x, in a random 3-D orientation.
    touching : float, optional
        Fraction (0-1) of nuclei placed against an earlier one, overlapping
        it by 5-15 % of the sum of their radii along the line joining them;
        the others keep a gap of at least 3 pixel units.
    dtype : {"uint16", "float32"}, optional
        Image dtype (uint16 is rounded and clipped).

    Returns
    -------
    image : (Z, Y, X) ndarray of uint16 or float32
        Counts: offset 100, background 300 and nuclei 240-560 above it
        (before blurring) at full illumination.
    labels : (Z, Y, X) ndarray of uint16
        Ground truth ``1..N`` (consecutive), 0 = background. A voxel inside
        two overlapping ellipsoids belongs to the one whose surface is
        further away.

    Raises
    ------
    InputError
        For a bad shape, spacing, count, range, fraction, illumination or dtype.

    Examples
    --------
    >>> image, labels = make_nuclei_stack((16, 48, 48), n_nuclei=2, seed=1)
    >>> image.shape, image.dtype.name, labels.dtype.name, int(labels.max())
    ((16, 48, 48), 'uint16', 'uint16', 2)
    >>> bool(image[labels > 0].mean() > image[labels == 0].mean())
    True
    """
    shape = check_shape(shape, 3, axes="(Z, Y, X)")
    z_spacing = check_positive(z_spacing, "z_spacing")
    n_nuclei = check_count(n_nuclei, "n_nuclei")
    seed = check_count(seed, "seed")
    _check_illumination(illumination)
    noise = check_nonnegative(noise, "noise")
    r_lo, r_hi = check_radius_range(radius_range)
    touching = check_touching(touching)
    dtype = check_image_dtype(dtype, ("uint16", "float32"))

    rng = np.random.default_rng([seed, 3])
    extent = np.array([shape[0] * z_spacing, shape[1], shape[2]], dtype=np.float64)
    nuclei = _place(extent, n_nuclei, (r_lo, r_hi), touching, rng)
    labels, signal = _draw(shape, z_spacing, nuclei)

    sigma = (_PSF_SIGMA_Z / z_spacing, _PSF_SIGMA_XY, _PSF_SIGMA_XY)
    field = _field(shape, illumination, seed)
    return camera_image(signal, field, psf_sigma=sigma, noise=noise, rng=rng, dtype=dtype), labels


def make_background_stack(
    shape: tuple[int, int, int] = (64, 256, 256), *, seed: int = 0, illumination: str = "uneven"
) -> np.ndarray:
    """The noiseless background of :func:`make_nuclei_stack`: ``100 + 300 * I(z, y, x)``.

    Examples
    --------
    >>> bg = make_background_stack((2, 4, 4), illumination="none")
    >>> float(bg.min()), float(bg.max())
    (400.0, 400.0)
    """
    shape = check_shape(shape, 3, axes="(Z, Y, X)")
    _check_illumination(illumination)
    return background_counts(_field(shape, illumination, check_count(seed, "seed")))


# ------------------------------------------------------------------- internals


def _field(shape: tuple[int, int, int], kind: str, seed: int) -> np.ndarray:
    """Illumination in (0, 1], float32, from its own random stream (so the background can be rebuilt alone)."""
    if kind == "none":
        return np.ones(shape, dtype=np.float32)
    depth, height, width = shape
    rng = np.random.default_rng([seed, 4])
    angle = rng.uniform(0.0, 2.0 * math.pi)
    y = np.linspace(-1.0, 1.0, height)[:, None] if height > 1 else np.zeros((1, 1))
    x = np.linspace(-1.0, 1.0, width)[None, :] if width > 1 else np.zeros((1, 1))
    c, s = math.cos(angle), math.sin(angle)
    span = abs(c) + abs(s)
    u = (c * x + s * y + span) / (2.0 * span)  # 0..1 across the plane
    plane = 1.0 - 0.45 * u - 0.1 * u * u
    t = np.linspace(0.0, 1.0, depth) if depth > 1 else np.zeros(1)
    fall = 1.0 - 0.5 * t + 0.1 * t * t  # 1 at the top plane, 0.6 at the bottom
    return (fall[:, None, None] * plane[None]).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation (rows are the ellipsoid's axes), from a QR decomposition."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    return q.T


def _reach(axes: np.ndarray, semi: np.ndarray, direction: np.ndarray) -> float:
    """Distance from an ellipsoid's centre to its surface along a unit ``direction``."""
    return 1.0 / math.sqrt(float(np.sum((axes @ direction / semi) ** 2)))


def _place(extent: np.ndarray, count: int, radius_range, touching: float, rng: np.random.Generator) -> list[Nucleus]:
    placed: list[Nucleus] = []
    for _ in range(count):
        radius = rng.uniform(*radius_range)
        ratios = rng.uniform(1.0, 1.4, size=3)
        semi = radius * ratios / np.prod(ratios) ** (1 / 3)
        axes = _random_rotation(rng)
        brightness = float(rng.uniform(0.6, 1.4))
        against = bool(placed) and rng.random() < touching
        for _attempt in range(_ATTEMPTS):
            if against:
                j = int(rng.integers(len(placed)))
                other_centre, other_axes, other_semi, _ = placed[j]
                direction = rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                dist = (_reach(other_axes, other_semi, direction) + _reach(axes, semi, -direction)) * rng.uniform(0.85, 0.95)
                centre = other_centre + dist * direction
                if np.any(centre < 0) or np.any(centre >= extent):
                    continue
                others = [p for i, p in enumerate(placed) if i != j]
            else:
                centre = rng.uniform(0, 1, size=3) * extent
                others = placed
            if all(np.linalg.norm(centre - p[0]) >= p[2].max() + semi.max() + _GAP for p in others):
                break
        else:
            continue
        placed.append((centre, axes, semi, brightness))
    return placed


def _draw(shape: tuple[int, int, int], z_spacing: float, nuclei: list[Nucleus]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the ellipsoids at voxel centres: labels and unblurred intensity."""
    labels = np.zeros(shape, dtype=label_dtype(len(nuclei)))
    signal = np.zeros(shape, dtype=np.float32)
    nearest = np.full(shape, np.inf, dtype=np.float32)
    scale = np.array([z_spacing, 1.0, 1.0])
    for index, (centre, axes, semi, brightness) in enumerate(nuclei, start=1):
        reach = float(semi.max())
        lo = np.maximum(0, np.floor((centre - reach) / scale)).astype(int)
        hi = np.minimum(shape, np.ceil((centre + reach) / scale) + 1).astype(int)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*(np.arange(a, b) * s - c for a, b, s, c in zip(lo, hi, scale, centre)), indexing="ij")
        offsets = np.stack(grids, axis=-1)  # (dz, dy, dx, 3) physical offsets from the centre
        rho2 = np.sum((offsets @ axes.T / semi) ** 2, axis=-1).astype(np.float32)
        paint_nucleus(labels, signal, nearest, tuple(slice(a, b) for a, b in zip(lo, hi)), rho2, index, brightness)
    # A nucleus can lose every voxel to neighbours or fall between planes: renumber 1..N.
    return renumber_present(labels, len(nuclei)), signal


def _check_illumination(kind: Any) -> None:
    if kind not in ILLUMINATIONS_3D:
        raise InputError(f"illumination must be one of {', '.join(ILLUMINATIONS_3D)}, got {kind!r}")
