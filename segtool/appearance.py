"""Appearance changes that other microscopes make to an image.

Each function takes a float image of any range and returns a new float32
image in the same units, changed the way another instrument or setting
would change it: a different display gamma, defocus, few photons, a camera
offset with uneven illumination, a few saturated cells, lossy compression.
They are used to measure how well segmentation survives such images (the
appearance sweep in ``bench/``) and to train models that survive them
(:mod:`segtool.train.augment`). Every random draw comes from the
:class:`numpy.random.Generator` passed in, so a seeded generator gives the
same result every run; the input array is never modified.

Images are 2-D ``(H, W)``, or ``(H, W, C)`` with channels last (colour); the
first two axes are always the spatial ones.

Where a function needs the typical brightness of objects (nuclei) and of
the background, it takes them from an optional boolean ``foreground`` mask
or, without one, from pixels above and below Otsu's threshold
(:func:`reference_levels`).
"""

from __future__ import annotations

import io
import math

import numpy as np

from segtool.errors import InputError

__all__ = [
    "adjust_gamma",
    "gaussian_blur",
    "jpeg_artifacts",
    "offset_gradient",
    "reference_levels",
    "saturate_objects",
    "saturated_blobs",
    "shot_noise",
]


def _float_image(image: np.ndarray) -> np.ndarray:
    data = np.asarray(image)
    if data.ndim not in (2, 3) or data.size == 0:
        raise InputError(f"expected a non-empty (H, W) or (H, W, C) image, got shape {data.shape}")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(f"unsupported image dtype {data.dtype}")
    data = data.astype(np.float32)  # always a copy: the caller's array is never written
    if not np.all(np.isfinite(data)):
        raise InputError("image holds NaN or infinite values")
    return data


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{name} must be a number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _check_mask(foreground: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if foreground is None:
        return None
    mask = np.asarray(foreground)
    if mask.shape != shape[:2]:
        raise InputError(f"foreground mask shape {mask.shape} differs from the image's {shape[:2]}")
    return mask.astype(bool)


def _grey(data: np.ndarray) -> np.ndarray:
    return data if data.ndim == 2 else data.mean(axis=2)


def reference_levels(image: np.ndarray, foreground: np.ndarray | None = None) -> tuple[float, float]:
    """Typical background and object brightness of an image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    foreground : (H, W) ndarray of bool, optional
        Object pixels. Default: pixels above Otsu's threshold.

    Returns
    -------
    background, objects : float
        Median of the background pixels and mean of the object pixels
        (channels averaged). ``objects > background`` unless the image is
        flat, where both are its value.

    Examples
    --------
    >>> img = np.zeros((4, 4)); img[1:3, 1:3] = 8.0
    >>> reference_levels(img)
    (0.0, 8.0)
    """
    grey = _grey(_float_image(image))
    mask = _check_mask(foreground, grey.shape)
    if mask is None:
        if grey.max() == grey.min():
            return float(grey.flat[0]), float(grey.flat[0])
        from skimage.filters import threshold_otsu

        mask = grey > threshold_otsu(grey)
    inside, outside = grey[mask], grey[~mask]
    background = float(np.median(outside)) if outside.size else float(grey.min())
    objects = float(inside.mean()) if inside.size else float(grey.max())
    return background, objects


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Raise the image to a power between its darkest and brightest value.

    ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma``: the extremes stay,
    mid-tones go darker for ``gamma > 1`` and brighter for ``gamma < 1``, as a
    camera's or a viewer's display curve would make them.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    gamma : float
        The exponent, > 0.

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> adjust_gamma(np.array([[0.0, 1.0, 4.0]]), 0.5).tolist()
    [[0.0, 2.0, 4.0]]
    """
    data = _float_image(image)
    gamma = _positive("gamma", gamma)
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return data
    unit = (data - lo) / np.float32(hi - lo)
    return (lo + (hi - lo) * np.power(unit, np.float32(gamma))).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur with a Gaussian of standard deviation ``sigma`` pixels (defocus, a larger point-spread function).

    Channels, if any, are blurred apart; edges are reflected (the total
    intensity is kept).

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    sigma : float
        >= 0; 0 returns a copy.

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> img = np.zeros((5, 5)); img[2, 2] = 1.0
    >>> out = gaussian_blur(img, 1.0)
    >>> round(float(out.sum()), 4), bool(out[2, 2] < 0.2)
    (1.0, True)
    """
    from scipy import ndimage as ndi

    data = _float_image(image)
    sigma = _positive("sigma", sigma, allow_zero=True)
    if sigma == 0:
        return data
    sigmas = (sigma, sigma) if data.ndim == 2 else (sigma, sigma, 0.0)
    return ndi.gaussian_filter(data, sigmas, mode="reflect").astype(np.float32)


def shot_noise(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    photons: float,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Poisson (shot) noise as if an object pixel had collected ``photons`` photons on average.

    The image above its darkest value is taken as proportional to the
    photon count, scaled so that the mean object pixel holds ``photons``;
    each pixel's count is drawn from a Poisson distribution and mapped back
    to the image's units. Few photons (~20) give the grainy images of fast
    or gentle live imaging.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    rng : numpy.random.Generator
    photons : float
        Mean photon count of an object pixel, > 0.
    foreground : (H, W) ndarray of bool, optional
        Object pixels (default: above Otsu's threshold).

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> img = np.zeros((20, 20)); img[5:15, 5:15] = 2.0
    >>> out = shot_noise(img, np.random.default_rng(0), photons=100)
    >>> bool(abs(out[5:15, 5:15].mean() - 2.0) < 0.1), float(out[0, 0])
    (True, 0.0)
    """
    data = _float_image(image)
    photons = _positive("photons", photons)
    mask = _check_mask(foreground, data.shape)
    low = float(data.min())
    signal = data - np.float32(low)
    grey = _grey(signal)
    if mask is None:
        _, level = reference_levels(signal)
    else:
        level = float(grey[mask].mean()) if mask.any() else float(grey.max())
    if level <= 0:
        return data
    gain = photons / level
    counts = rng.poisson(signal.astype(np.float64) * gain)
    return (counts / gain + low).astype(np.float32)


def _field(shape: tuple[int, int], rng: np.random.Generator, smooth: bool) -> np.ndarray:
    """A random illumination field in [0, 1]: a linear ramp in a random direction, or a smooth random surface."""
    height, width = shape
    if smooth:
        from scipy import ndimage as ndi

        coarse = rng.standard_normal((4, 4))
        field = ndi.zoom(coarse, (height / 4, width / 4), order=3, mode="nearest", grid_mode=True)[:height, :width]
    else:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        yy, xx = np.mgrid[:height, :width]
        field = yy * math.sin(angle) + xx * math.cos(angle)
    span = float(field.max() - field.min())
    return ((field - field.min()) / span if span > 0 else np.zeros(shape)).astype(np.float32)


def offset_gradient(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    offset: float = 1000.0,
    signal: float = 4000.0,
    gradient: float = 0.5,
    smooth: bool = False,
) -> np.ndarray:
    """The image as a 16-bit camera with an offset and uneven illumination would record it.

    The image's darkest value maps to ``offset`` counts and its 99.8th
    percentile to ``offset + signal``; a background that rises by
    ``gradient * signal`` counts across the field is added (a linear ramp in
    a random direction, or with ``smooth`` a smooth random surface), and the
    result is rounded to whole counts and clipped to 0..65535.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    rng : numpy.random.Generator
        Draws the ramp's direction or the surface.
    offset : float, optional
        Camera offset in counts, >= 0.
    signal : float, optional
        Counts spanned by the image's own range, > 0 (small values also
        show the quantisation of a dim recording).
    gradient : float, optional
        Height of the background gradient as a fraction of ``signal``, >= 0.
    smooth : bool, optional
        A smooth random surface instead of a linear ramp.

    Returns
    -------
    ndarray of float32
        Whole counts, in camera units (not the input's).

    Examples
    --------
    >>> out = offset_gradient(np.zeros((3, 3)), np.random.default_rng(0), offset=100, gradient=0.01)
    >>> float(out.min()), float(out.max())
    (100.0, 140.0)
    """
    data = _float_image(image)
    offset = _positive("offset", offset, allow_zero=True)
    signal = _positive("signal", signal)
    gradient = _positive("gradient", gradient, allow_zero=True)
    low, high = float(data.min()), float(np.percentile(data, 99.8))
    scaled = (data - np.float32(low)) * np.float32(signal / (high - low) if high > low else 0.0)
    field = _field(data.shape[:2], rng, smooth) * np.float32(gradient * signal)
    if data.ndim == 3:
        field = field[..., None]
    return np.clip(np.round(scaled + field + np.float32(offset)), 0, 65535).astype(np.float32)


def _dome(shape: tuple[int, int], centre: tuple[float, float], diameter: float) -> np.ndarray:
    """Gaussian of standard deviation ``diameter / 4`` at ``centre``, 1 at its peak (over its box only)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    sigma = diameter / 4.0
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2.0 * sigma * sigma)).astype(np.float32)


def saturated_blobs(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    diameter: float,
    size: tuple[float, float] = (1.0, 2.0),
    brightness: float = 10.0,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Add ``count`` saturated bright blobs (dead or mitotic cells, debris) at random places.

    Each blob is a dome whose top is cut at the saturation level,
    ``background + brightness * (objects - background)`` (see
    :func:`reference_levels`), over about three quarters of its diameter;
    the whole image is then clipped at that level, as a sensor saturates.
    In a field of ordinary nuclei, such blobs make the 99.8th percentile the
    saturation value, the case that dims every other nucleus under plain
    percentile normalisation.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    rng : numpy.random.Generator
        Draws each blob's centre and diameter.
    count : int
        Number of blobs, >= 0.
    diameter : float
        The typical object diameter in pixels, > 0; each blob's diameter is
        drawn uniformly from ``size`` times it.
    size : (float, float), optional
        Range of blob diameters relative to ``diameter``.
    brightness : float, optional
        Saturation level as a multiple of the objects' brightness above
        background, > 0.
    foreground : (H, W) ndarray of bool, optional
        Object pixels for the reference levels (default: Otsu).

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> img = np.zeros((40, 40)); img[5:10, 5:10] = 1.0
    >>> out = saturated_blobs(img, np.random.default_rng(0), count=2, diameter=8)
    >>> float(out.max()), bool((out == 10.0).sum() >= 2)
    (10.0, True)
    """
    data = _float_image(image)
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise InputError(f"count must be an integer >= 0, got {count!r}")
    diameter = _positive("diameter", diameter)
    brightness = _positive("brightness", brightness)
    if not (len(size) == 2 and 0 < size[0] <= size[1]):
        raise InputError(f"size must be (low, high) with 0 < low <= high, got {size!r}")
    background, objects = reference_levels(data, _check_mask(foreground, data.shape))
    contrast = objects - background if objects > background else 1.0
    level = np.float32(background + brightness * contrast)
    height, width = data.shape[:2]
    out = data
    for _ in range(int(count)):
        centre = (rng.uniform(0, height), rng.uniform(0, width))
        blob_diameter = diameter * rng.uniform(size[0], size[1])
        # 3x the level at the peak: the dome is above saturation within ~0.74 of its diameter
        dome = background + 3.0 * (level - background) * _dome((height, width), centre, blob_diameter)
        out = np.maximum(out, dome if data.ndim == 2 else dome[..., None])
    return np.minimum(out, level).astype(np.float32)


def saturate_objects(
    image: np.ndarray,
    foreground: np.ndarray,
    rng: np.random.Generator,
    *,
    count: int,
    diameter: float,
    brightness: float = 10.0,
) -> np.ndarray:
    """Make ``count`` of the objects saturated, keeping their shape.

    For each of ``count`` object pixels drawn at random, the connected
    object (of ``foreground``) holding it, grown by 2 pixels and limited to
    a disk of radius ``diameter`` around the pixel, gets its contrast above
    background multiplied by ``2 * brightness`` and cut at the saturation
    level of :func:`saturated_blobs`: the object becomes a flat, saturated
    version of itself while the background around it stays (nearly) as it
    was. Used in training, where the target must stay true: a saturated
    nucleus is still a nucleus.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    foreground : (H, W) ndarray of bool
        Object pixels; the centres are drawn from them.
    rng : numpy.random.Generator
    count : int
        Number of objects to saturate, >= 0 (none when there is no object).
    diameter : float
        The typical object diameter in pixels, > 0.
    brightness : float, optional
        Saturation level as a multiple of the objects' brightness above background.

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> img = np.zeros((20, 20)); img[4:8, 4:8] = 1.0; img[12:16, 12:16] = 1.0
    >>> out = saturate_objects(img, img > 0, np.random.default_rng(0), count=1, diameter=4)
    >>> sorted(np.unique(out).tolist()), int((out == 10.0).sum())
    ([0.0, 1.0, 10.0], 16)
    """
    data = _float_image(image)
    mask = _check_mask(foreground, data.shape)
    if mask is None:
        raise InputError("saturate_objects needs a foreground mask")
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise InputError(f"count must be an integer >= 0, got {count!r}")
    diameter = _positive("diameter", diameter)
    brightness = _positive("brightness", brightness)
    pixels = np.flatnonzero(mask)
    if not pixels.size or not count:
        return data
    background, objects = reference_levels(data, mask)
    contrast = objects - background if objects > background else 1.0
    level = np.float32(background + brightness * contrast)
    gain = np.float32(2.0 * brightness)
    from scipy import ndimage as ndi

    components, _ = ndi.label(mask)
    height, width = data.shape[:2]
    yy, xx = np.ogrid[:height, :width]
    out = data
    for flat in rng.choice(pixels, size=int(count)):
        y, x = divmod(int(flat), width)
        grown = ndi.binary_dilation(components == components[y, x], iterations=2)
        inside = grown & ((yy - y) ** 2 + (xx - x) ** 2 <= diameter**2)
        if data.ndim == 3:
            inside = inside[..., None]
        boosted = np.minimum(np.float32(background) + (out - np.float32(background)) * gain, level)
        out = np.where(inside, np.maximum(out, boosted), out)
    return out.astype(np.float32)


def jpeg_artifacts(image: np.ndarray, *, quality: int) -> np.ndarray:
    """Save as an 8-bit JPEG at ``quality`` and read back, in the image's units.

    The image's range (darkest to brightest) is mapped to 0..255, encoded
    with Pillow, decoded and mapped back: 8-bit quantisation plus the block
    and ringing artefacts of lossy compression.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
    quality : int
        JPEG quality, 1 (worst) to 95.

    Returns
    -------
    ndarray of float32

    Examples
    --------
    >>> img = np.tile(np.linspace(0, 1000, 16), (16, 1))
    >>> out = jpeg_artifacts(img, quality=90)
    >>> out.dtype, bool(np.abs(out - img).max() < 40)
    (dtype('float32'), True)
    """
    from PIL import Image

    data = _float_image(image)
    if not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 95:
        raise InputError(f"quality must be an integer from 1 to 95, got {quality!r}")
    if data.ndim == 3 and data.shape[2] != 3:
        raise InputError(f"JPEG holds 1 or 3 channels, got {data.shape[2]}")
    lo, hi = float(data.min()), float(data.max())
    if hi == lo:
        return data
    bytes8 = np.round((data - lo) * np.float32(255.0 / (hi - lo))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(bytes8).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32)
    return (lo + decoded * np.float32((hi - lo) / 255.0)).astype(np.float32)
