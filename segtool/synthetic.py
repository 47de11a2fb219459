"""Synthetic fluorescence nuclei images with exact ground-truth labels.

For tests and benchmarks: elliptical nuclei (some touching) on a background
lit unevenly, with shot and read noise, in detector counts. Everything is
deterministic given ``seed``.

Image model, in counts::

    image = OFFSET + noise(I(y, x) * (BACKGROUND + nuclei))

``I`` is the illumination field (1 at its brightest), ``nuclei`` the blurred
nucleus intensities, and the noise Poisson shot noise plus Gaussian read noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segtool.checks import check_count, check_nonnegative, check_shape
from segtool.errors import InputError
from segtool.labels import label_dtype

__all__ = [
    "ILLUMINATIONS",
    "make_background",
    "make_nuclei_image",
    "check_radius_range",
    "check_touching",
    "check_image_dtype",
    "camera_image",
    "background_counts",
    "paint_nucleus",
    "renumber_present",
]

#: Values accepted by ``illumination=``.
ILLUMINATIONS: tuple[str, ...] = ("gradient", "vignette", "none")

# Camera offset and background fluorescence (counts at full illumination).
_OFFSET = 100.0
_BACKGROUND = 300.0
# Mean nucleus brightness above the background (counts at full illumination);
# each nucleus is 0.6-1.4 times this.
_NUCLEUS = 400.0
# Read noise (counts) at noise=1.
_READ_NOISE = 3.0
# Point-spread function: Gaussian sigma in pixels.
_PSF_SIGMA = 1.0
# Gap (pixels) kept between nuclei that are not meant to touch.
_GAP = 3.0
# Placement attempts per nucleus before it is given up.
_ATTEMPTS = 50


def make_nuclei_image(
    shape: tuple[int, int] = (256, 256),
    *,
    n_nuclei: int = 30,
    seed: int = 0,
    illumination: str = "gradient",
    noise: float = 1.0,
    radius_range: tuple[float, float] = (6, 14),
    touching: float = 0.3,
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Make a synthetic fluorescence image of nuclei and its label image.

    Parameters
    ----------
    shape : tuple of int, optional
        Image shape ``(H, W)``.
    n_nuclei : int, optional
        Nuclei to place. Fewer are placed when they do not fit (each gets 50
        attempts at a free spot), so check ``labels.max()``.
    seed : int, optional
        Seed; the same arguments give the same arrays.
    illumination : {"gradient", "vignette", "none"}, optional
        Uneven illumination multiplying background and nuclei: ``"gradient"``
        falls from 1 to 0.3 across the image in a random direction (a degree-2
        polynomial of position); ``"vignette"`` falls from 1 near the centre to
        about 0.35 in the corners (degree 4); ``"none"`` is flat. See
        :func:`make_background`.
    noise : float, optional
        Noise strength: 0 gives the noiseless image; 1 gives Poisson shot noise
        on the photon counts plus Gaussian read noise of 3 counts; larger
        values scale both standard deviations by ``noise``.
    radius_range : (float, float), optional
        Range of the nucleus radii in pixels (geometric mean of the two
        semi-axes; the aspect ratio is 1-1.4).
    touching : float, optional
        Fraction (0-1) of the nuclei placed against an earlier nucleus,
        overlapping it by 5-15 % of the sum of their radii; the others keep a
        gap of at least 3 pixels.
    dtype : {"float32", "uint16"}, optional
        Image dtype (uint16 is rounded and clipped).

    Returns
    -------
    image : (H, W) ndarray of float32 or uint16
        Counts: offset 100, background 300 and nuclei 240-560 above it at full
        illumination.
    labels : (H, W) ndarray of uint16 (uint32 above 65535 nuclei)
        Ground truth: nuclei ``1..N`` (consecutive, in placement order),
        0 = background. A pixel inside two overlapping ellipses belongs to
        the one whose outline is further away.

    Raises
    ------
    InputError
        For a bad ``shape``, negative ``n_nuclei`` or ``noise``, an empty or
        non-positive ``radius_range``, ``touching`` outside 0-1, or an unknown
        ``illumination`` or ``dtype``.

    Examples
    --------
    >>> image, labels = make_nuclei_image((64, 64), n_nuclei=3, seed=1)
    >>> image.shape, image.dtype.name, labels.dtype.name, int(labels.max())
    ((64, 64), 'float32', 'uint16', 3)
    >>> bool(image[labels > 0].mean() > image[labels == 0].mean())
    True
    """
    shape = check_shape(shape, 2, axes="(H, W)")
    seed = check_count(seed, "seed")
    n_nuclei = check_count(n_nuclei, "n_nuclei")
    illumination = _check_illumination(illumination)
    noise = check_nonnegative(noise, "noise")
    r_lo, r_hi = check_radius_range(radius_range)
    touching = check_touching(touching)
    dtype = check_image_dtype(dtype, ("float32", "uint16", np.float32, np.uint16))

    rng = np.random.default_rng([int(seed), 0])
    nuclei = _place_nuclei(shape, n_nuclei, (r_lo, r_hi), touching, rng)
    labels, signal = _draw_nuclei(shape, nuclei, rng)

    field = _illumination(shape, illumination, seed)
    image = camera_image(signal, field, psf_sigma=_PSF_SIGMA, noise=noise, rng=rng, dtype=dtype)
    return image, labels


def make_background(
    shape: tuple[int, int] = (256, 256), *, seed: int = 0, illumination: str = "gradient"
) -> np.ndarray:
    """The noiseless background of :func:`make_nuclei_image` (offset plus lit background).

    Parameters
    ----------
    shape : tuple of int, optional
        Image shape ``(H, W)``.
    seed : int, optional
        The seed given to :func:`make_nuclei_image` (it sets the gradient's
        direction and the vignette's centre).
    illumination : {"gradient", "vignette", "none"}, optional
        As in :func:`make_nuclei_image`.

    Returns
    -------
    background : (H, W) ndarray of float32
        ``100 + 300 * I(y, x)``: what the image would show without nuclei
        and noise.

    Examples
    --------
    >>> bg = make_background((8, 8), illumination="none")
    >>> float(bg.min()), float(bg.max())
    (400.0, 400.0)
    """
    shape = check_shape(shape, 2, axes="(H, W)")
    field = _illumination(shape, _check_illumination(illumination), check_count(seed, "seed"))
    return background_counts(field)


# ------------------------------------------------------------------- internals


def _illumination(shape: tuple[int, int], kind: str, seed: int) -> np.ndarray:
    """Illumination field in (0, 1], float32; its own random stream so
    :func:`make_background` can rebuild it without drawing the nuclei."""
    height, width = shape
    if kind == "none":
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([int(seed), 1])
    y = np.linspace(-1.0, 1.0, height, dtype=np.float64)[:, None] if height > 1 else np.zeros((1, 1))
    x = np.linspace(-1.0, 1.0, width, dtype=np.float64)[None, :] if width > 1 else np.zeros((1, 1))
    if kind == "gradient":
        # u runs from 0 to 1 across the image along a random direction.
        angle = rng.uniform(0.0, 2.0 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        extent = abs(c) + abs(s)
        u = (c * x + s * y + extent) / (2.0 * extent)
        field = 1.0 - 0.55 * u - 0.15 * u * u
    else:  # vignette: off-centre radial fall-off, degree 4
        cy, cx = rng.uniform(-0.2, 0.2, size=2)
        r2 = ((y - cy) ** 2 + (x - cx) ** 2) / 2.0
        field = 1.0 - 0.45 * r2 - 0.2 * r2 * r2
        field = np.maximum(field, 0.05)
    return np.broadcast_to(field, shape).astype(np.float32)


def _place_nuclei(
    shape: tuple[int, int], count: int, radius_range: tuple[float, float], touching: float, rng: np.random.Generator
) -> list[tuple[float, float, float, float, float, float]]:
    """Centres, semi-axes, angle and brightness: (cy, cx, a, b, theta, brightness)."""
    height, width = shape
    placed: list[tuple[float, float, float, float, float, float]] = []
    centres = np.empty((count, 2))
    reach = np.empty(count)  # largest semi-axis, for the gap test
    for _ in range(count):
        radius = rng.uniform(*radius_range)
        aspect = rng.uniform(1.0, 1.4)
        a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
        theta = rng.uniform(0.0, math.pi)
        brightness = rng.uniform(0.6, 1.4)
        against = bool(placed) and rng.random() < touching
        for _attempt in range(_ATTEMPTS):
            if against:
                j = int(rng.integers(len(placed)))
                jy, jx, ja, jb, jt, _ = placed[j]
                phi = rng.uniform(0.0, 2.0 * math.pi)
                # Radii of both ellipses along the line joining the centres.
                reach_sum = _radius_along(ja, jb, jt, phi) + _radius_along(a, b, theta, phi + math.pi)
                dist = reach_sum * rng.uniform(0.85, 0.95)
                cy, cx = jy + dist * math.sin(phi), jx + dist * math.cos(phi)
                if not (0 <= cy < height and 0 <= cx < width):
                    continue
                others = np.arange(len(placed)) != j
            else:
                cy, cx = rng.uniform(0, height), rng.uniform(0, width)
                others = np.ones(len(placed), dtype=bool)
            n = len(placed)
            d = np.hypot(centres[:n, 0] - cy, centres[:n, 1] - cx)
            if np.all(d[others] >= reach[:n][others] + a + _GAP):
                break
        else:
            continue  # no room: skip this nucleus
        centres[len(placed)] = cy, cx
        reach[len(placed)] = a
        placed.append((cy, cx, a, b, theta, brightness))
    return placed


def _radius_along(a: float, b: float, theta: float, phi: float) -> float:
    """Distance from an ellipse's centre to its outline in direction ``phi``."""
    d = phi - theta
    return 1.0 / math.sqrt((math.cos(d) / a) ** 2 + (math.sin(d) / b) ** 2)


def _draw_nuclei(
    shape: tuple[int, int], nuclei: list[tuple[float, float, float, float, float, float]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the ellipses: labels and the (unblurred) nucleus intensity, float32."""
    height, width = shape
    dtype = label_dtype(len(nuclei))
    labels = np.zeros(shape, dtype=dtype)
    signal = np.zeros(shape, dtype=np.float32)
    # Normalised elliptic radius**2 of the nucleus owning each pixel (1 = outline).
    nearest = np.full(shape, np.inf, dtype=np.float32)
    for index, (cy, cx, a, b, theta, brightness) in enumerate(nuclei, start=1):
        y0, y1 = max(0, math.floor(cy - a)), min(height, math.ceil(cy + a) + 1)
        x0, x1 = max(0, math.floor(cx - a)), min(width, math.ceil(cx + a) + 1)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        c, s = math.cos(theta), math.sin(theta)
        rho2 = ((xx * c + yy * s) / a) ** 2 + ((yy * c - xx * s) / b) ** 2
        paint_nucleus(labels, signal, nearest, (slice(y0, y1), slice(x0, x1)), rho2, index, brightness)
    # Mild chromatin texture (+-8 %) inside the nuclei.
    texture = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.5)
    texture *= np.float32(0.08 / max(float(texture.std()), 1e-6))
    signal *= 1.0 + texture
    # A nucleus can lose every pixel to overlapping neighbours: renumber 1..N.
    return renumber_present(labels, len(nuclei)), signal


def _check_illumination(kind: Any) -> str:
    if kind not in ILLUMINATIONS:
        raise InputError(f"illumination must be one of {', '.join(ILLUMINATIONS)}, got {kind!r}")
    return kind



# ------------------------------------------------ shared with segtool.volume.synthetic
# The 2-D and 3-D generators model the same detector and draw nuclei the same
# way; these pieces are public so the 3-D module uses them rather than a copy.


def check_radius_range(radius_range: Any) -> tuple[float, float]:
    """Check ``radius_range``: two numbers with ``0 < low <= high`` (finite).

    Returns
    -------
    low, high : float

    Raises
    ------
    InputError
        If it is not two such numbers.
    """
    try:
        lo, hi = (float(v) for v in radius_range)
    except (TypeError, ValueError):
        raise InputError(f"radius_range must be two numbers (low, high), got {radius_range!r}") from None
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise InputError(f"radius_range must satisfy 0 < low <= high, got {radius_range!r}")
    return lo, hi


def check_touching(touching: Any) -> float:
    """Check ``touching``: a fraction from 0 to 1.

    Raises
    ------
    InputError
        If it is not a number in [0, 1].
    """
    touching = check_nonnegative(touching, "touching")
    if touching > 1:
        raise InputError(f"touching must be a fraction from 0 to 1, got {touching!r}")
    return touching


def check_image_dtype(dtype: Any, accepted: tuple[Any, ...]) -> str:
    """Check an image ``dtype`` against ``accepted`` and return its name.

    Parameters
    ----------
    dtype : str or numpy type
        The value given.
    accepted : tuple
        Accepted values; the first two are the names quoted in the message.

    Returns
    -------
    name : str
        ``numpy.dtype(dtype).name``.

    Raises
    ------
    InputError
        If ``dtype`` is not in ``accepted``.
    """
    if dtype not in accepted:
        raise InputError(f"dtype must be {accepted[0]!r} or {accepted[1]!r}, got {dtype!r}")
    return np.dtype(dtype).name


def camera_image(
    signal: np.ndarray,
    field: np.ndarray,
    *,
    psf_sigma: float | tuple[float, ...],
    noise: float,
    rng: np.random.Generator,
    dtype: str,
) -> np.ndarray:
    """What the simulated camera records of nuclei ``signal`` lit by ``field``.

    Blurs ``signal`` by a Gaussian point-spread function, adds the background
    fluorescence, multiplies by the illumination, draws shot and read noise
    and adds the camera offset.

    Parameters
    ----------
    signal : (M, N) or (P, M, N) ndarray of float32
        Unblurred nucleus intensity above the background, in counts.
    field : ndarray of float32
        Illumination in (0, 1], broadcastable to ``signal``.
    psf_sigma : float or tuple of float
        Gaussian sigma of the PSF in pixels, one per axis or one for all.
    noise : float
        0 = noiseless; 1 = Poisson shot noise plus Gaussian read noise of 3
        counts; larger values scale both standard deviations.
    rng : numpy.random.Generator
        Stream for the noise (one Poisson draw, then one normal draw).
    dtype : {"float32", "uint16"}
        Output dtype; uint16 is rounded and clipped.

    Returns
    -------
    image : ndarray of ``dtype``
    """
    photons = ndi.gaussian_filter(signal, psf_sigma, mode="constant")
    photons += np.float32(_BACKGROUND)
    photons *= field
    if noise > 0:
        # Shot noise with variance noise**2 * photons: Poisson in units of noise**2.
        gain = noise * noise
        photons = (rng.poisson(photons / gain) * gain).astype(np.float32)
        photons += rng.normal(0.0, _READ_NOISE * noise, size=signal.shape).astype(np.float32)
    image = photons + np.float32(_OFFSET)
    if dtype == "uint16":
        image = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    return image.astype(dtype, copy=False)


def background_counts(field: np.ndarray) -> np.ndarray:
    """The noiseless background under illumination ``field``: ``100 + 300 * field``, float32."""
    return (np.float32(_OFFSET) + np.float32(_BACKGROUND) * field).astype(np.float32)


def paint_nucleus(
    labels: np.ndarray,
    signal: np.ndarray,
    nearest: np.ndarray,
    box: tuple[slice, ...],
    rho2: np.ndarray,
    index: int,
    brightness: float,
) -> None:
    """Draw one nucleus into ``labels`` and ``signal`` in place.

    Parameters
    ----------
    labels, signal, nearest : ndarray
        The label image, the nucleus intensity and, per pixel, the normalised
        squared radius of the nucleus owning it (``inf`` where none does);
        all three are updated.
    box : tuple of slice
        The nucleus's bounding box in those arrays.
    rho2 : ndarray of float32
        Normalised squared radius inside ``box`` (1 on the outline).
    index : int
        The nucleus's label.
    brightness : float
        Its brightness relative to the mean nucleus.

    Notes
    -----
    A pixel inside two nuclei goes to the one whose outline is further away
    (smaller ``rho2``).
    """
    mine = (rho2 <= 1.0) & (rho2 < nearest[box])
    nearest[box][mine] = rho2[mine]
    labels[box][mine] = index
    # Slightly brighter centre, as a nucleus is thicker there.
    signal[box][mine] = np.float32(_NUCLEUS * brightness) * (1.0 - 0.25 * rho2[mine])


def renumber_present(labels: np.ndarray, count: int) -> np.ndarray:
    """Renumber labels ``1..count`` to ``1..N`` when some of them left no pixel.

    Parameters
    ----------
    labels : ndarray of unsigned int
        Labels drawn as ``1..count``.
    count : int
        Nuclei drawn.

    Returns
    -------
    labels : ndarray
        ``labels`` itself when every label is present, else a renumbered copy
        (same dtype, order kept).
    """
    present = np.zeros(count + 1, dtype=bool)
    present[np.unique(labels)] = True
    if present[1:].all():
        return labels
    lut = (np.cumsum(present) - 1).astype(labels.dtype)
    lut[0] = 0
    return lut[labels]
