"""Random augmentation of a training patch and its target, applied together.

Geometric transforms (flips, 90-degree rotations, rotation by any angle and
zoom, elastic deformation) move image and target pixels identically;
intensity transforms (scale, shift, Gaussian noise) change the image only,
as do the appearance changes of other microscopes (gamma, blur, shot noise,
camera offset and uneven illumination, saturated objects, JPEG; see
:mod:`segtool.appearance`), which are off unless ``appearance`` > 0.
Every random draw comes from the :class:`numpy.random.Generator` passed in,
so a seeded generator gives the same patches every run.

Rotation by any angle and zoom-out need pixels from outside the patch. The
caller can pass a larger window and ask for a smaller ``output_size``: the
output is sampled from the window's centre, so its corners come from real
image context instead of mirrored copies of the patch (see
:func:`context_margin` for how much is needed).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["AugmentOptions", "augment_pair", "context_margin", "elastic_field"]


@dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations to apply and how strongly.

    Parameters
    ----------
    flip : bool
        Random horizontal and vertical flips.
    rotate90 : bool
        Random rotation by 0, 90, 180 or 270 degrees (square patches).
    intensity_scale : float
        Image multiplied by a factor drawn log-uniformly from
        ``[1 / (1 + s), 1 + s]``; 0 disables.
    intensity_shift : float
        Constant drawn from ``[-s, s]`` added to the (normalised) image.
    noise_std : float
        Gaussian noise with a standard deviation drawn from ``[0, noise_std]``.
    elastic : bool
        Smooth random elastic deformation.
    elastic_alpha : float
        Typical displacement of the elastic deformation, in pixels.
    elastic_spacing : int
        Distance in pixels between the random control points of the
        deformation (larger is smoother).
    rotate : bool
        Random rotation by any angle (on top of ``rotate90``).
    zoom : float
        Random zoom by a factor drawn log-uniformly from
        ``[1 / (1 + z), 1 + z]`` (objects grow or shrink); 0 disables.
    appearance : float
        Probability (0-1) with which each of the appearance changes below is
        applied to a patch, independently; 0 (the default) applies none and
        draws nothing, so runs without it are unchanged.
    gamma : float
        Gamma drawn log-uniformly from ``[1 / (1 + g), 1 + g]``; 0 disables.
    blur : float
        Gaussian blur with sigma drawn from ``[0, blur]`` pixels; 0 disables.
    photons : float
        Shot noise at a photon count per object pixel drawn log-uniformly
        from ``[photons, 100 * photons]``; 0 disables.
    gradient : float
        A 16-bit camera recording with a random offset, a random (often
        small, so coarsely quantised) signal range and a background ramp or
        smooth surface up to ``gradient`` times the patch's range; 0 disables.
    blobs : int
        Saturate between 1 and ``blobs`` of the patch's objects (their shape
        kept, brightness 3-10 times their contrast); 0 disables.
    jpeg : int
        JPEG compression at a quality drawn from ``[jpeg, 95]``; 0 disables.
    """

    flip: bool = True
    rotate90: bool = True
    intensity_scale: float = 0.25
    intensity_shift: float = 0.1
    noise_std: float = 0.03
    elastic: bool = False
    elastic_alpha: float = 4.0
    elastic_spacing: int = 32
    rotate: bool = False
    zoom: float = 0.0
    appearance: float = 0.0
    gamma: float = 1.2
    blur: float = 2.5
    photons: float = 10.0
    gradient: float = 1.0
    blobs: int = 3
    jpeg: int = 50

    def __post_init__(self) -> None:
        for name in ("intensity_scale", "intensity_shift", "noise_std", "elastic_alpha", "zoom",
                     "appearance", "gamma", "blur", "photons", "gradient"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if int(self.elastic_spacing) < 2:
            raise InputError(f"elastic_spacing must be >= 2, got {self.elastic_spacing!r}")
        if self.appearance > 1:
            raise InputError(f"appearance is a probability (0-1), got {self.appearance!r}")
        if not isinstance(self.blobs, int) or self.blobs < 0:
            raise InputError(f"blobs must be an integer >= 0, got {self.blobs!r}")
        if not isinstance(self.jpeg, int) or not (self.jpeg == 0 or 1 <= self.jpeg <= 95):
            raise InputError(f"jpeg must be 0 (off) or a quality from 1 to 95, got {self.jpeg!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def microscopes(cls, probability: float = 0.15, **changes: Any) -> AugmentOptions:
        """The default options plus every appearance change, each applied with ``probability``.

        With 0.15 about 40% of patches keep their own appearance and most of
        the rest get one or two changes.

        Examples
        --------
        >>> AugmentOptions.microscopes().appearance
        0.15
        """
        return cls(appearance=probability, **changes)

    @classmethod
    def none(cls) -> AugmentOptions:
        """No augmentation at all."""
        return cls(flip=False, rotate90=False, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)


def context_margin(patch_size: int, options: AugmentOptions) -> int:
    """Pixels of context needed on each side of a patch for its geometric warp.

    A patch rotated by 45 degrees and zoomed out by ``1 + zoom`` reads from
    up to ``patch_size / sqrt(2) * (1 + zoom)`` pixels from its centre; the
    elastic field adds up to about three times its typical displacement.
    0 when neither rotation by any angle nor zoom is on (elastic deformation
    alone then mirrors at the patch edge, as it always has).

    Examples
    --------
    >>> context_margin(128, AugmentOptions())
    0
    >>> context_margin(128, AugmentOptions(rotate=True, zoom=0.25))
    50
    """
    if not (options.rotate or options.zoom):
        return 0
    half = patch_size / 2.0
    reach = half * (math.sqrt(2.0) if options.rotate else 1.0) * (1.0 + options.zoom)
    if options.elastic:
        reach += 3.0 * options.elastic_alpha
    return int(math.ceil(reach - half))


def _affine_coords(
    shape: tuple[int, int], output: tuple[int, int], rng: np.random.Generator, options: AugmentOptions
) -> np.ndarray:
    """Source coordinates (2, h, w) in an input of ``shape`` for an ``output`` window at its centre.

    The output is rotated by a random angle and zoomed by a random factor about
    its centre; with neither on it is the plain centre crop.
    """
    angle = rng.uniform(0.0, 2.0 * math.pi) if options.rotate else 0.0
    if options.zoom:
        bound = math.log1p(options.zoom)
        zoom = math.exp(rng.uniform(-bound, bound))
    else:
        zoom = 1.0
    out_y, out_x = np.mgrid[: output[0], : output[1]].astype(np.float32)
    out_y -= (output[0] - 1) / 2.0
    out_x -= (output[1] - 1) / 2.0
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom  # zoom > 1 reads a smaller area: objects grow
    coords = np.empty((2, *output), np.float32)
    coords[0] = cos * out_y - sin * out_x + (shape[0] - 1) / 2.0
    coords[1] = sin * out_y + cos * out_x + (shape[1] - 1) / 2.0
    return coords


@functools.lru_cache(maxsize=32)
def _spline_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) matrix that up-samples ``points`` values to ``size`` by cubic spline interpolation.

    Column ``j`` is the 1-D up-sampling of the ``j``-th unit vector; up-sampling
    is linear, so the matrix times any vector up-samples that vector. Cached
    (read-only): a training run asks for the same one or two shapes again
    and again.
    """
    from scipy import ndimage as ndi

    columns = [
        ndi.zoom(unit, size / points, order=3, mode="nearest", grid_mode=True)[:size] for unit in np.eye(points)
    ]
    matrix = np.stack(columns, axis=1)
    matrix.flags.writeable = False
    return matrix


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, *, alpha: float, spacing: int) -> np.ndarray:
    """Smooth random displacement field of shape (2, H, W), in pixels.

    Control points every ``spacing`` pixels get a normal displacement with
    standard deviation ``alpha``; cubic spline up-sampling interpolates
    between them.

    Notes
    -----
    The 2-D cubic spline up-sampling (what ``scipy.ndimage.zoom`` computes)
    is separable, so it is done as two small matrix products,
    ``Ay @ coarse @ Ax.T``, with cached 1-D interpolation matrices: the
    same float32 field (all 51 million values of 1,500 fields of five
    shapes were equal) about 30x faster than ``zoom`` on the 2-D grid (0.09
    versus 2.9 ms for 128 x 128), which had made the field most of an
    elastic patch's cost.

    Examples
    --------
    >>> f = elastic_field((40, 30), np.random.default_rng(0), alpha=3.0, spacing=10)
    >>> f.shape, f.dtype
    ((2, 40, 30), dtype('float32'))
    """
    height, width = shape
    grid = (max(2, math.ceil(height / spacing) + 1), max(2, math.ceil(width / spacing) + 1))
    coarse = rng.normal(0.0, alpha, size=(2, *grid))
    rows, columns = _spline_matrix(height, grid[0]), _spline_matrix(width, grid[1])
    out = np.empty((2, height, width), np.float32)
    for axis in range(2):
        out[axis] = rows @ coarse[axis] @ columns.T
    return out


def _warp(array: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return np.stack(
        [ndi.map_coordinates(channel, coords, order=order, mode="mirror") for channel in array]
    ).astype(np.float32, copy=False)


def augment_pair(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    options: AugmentOptions = AugmentOptions(),
    target_order: int = 0,
    output_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment an image patch and its target with the same random geometry.

    Parameters
    ----------
    image : (C, H, W) ndarray of float32
        Normalised image patch; not modified.
    target : (K, H, W) ndarray
        Target patch (class indices or maps); not modified.
    rng : numpy.random.Generator
        Source of every random draw.
    options : AugmentOptions, optional
    target_order : int, optional
        Interpolation order for the target in the geometric warp (0, nearest,
        keeps class indices integral).
    output_size : int, optional
        Return a square patch of this size sampled from the centre of the
        (larger) input, which supplies the context that rotation and zoom
        read from. Default: the input's size.

    Returns
    -------
    image, target : ndarray of float32
        New arrays; without ``output_size``, rotations by 90 or 270 degrees
        swap H and W.

    Notes
    -----
    The appearance changes (``options.appearance`` > 0) come after the
    geometry and before the intensity scale, shift and noise. They work on
    the normalised patch as if it were a raw image whose background is near
    0 and whose objects are near 1, and take the objects' pixels to be
    those where the target's first channel is 1 (the interior class of
    ``three_class`` targets, the foreground of ``distance`` ones).

    Raises
    ------
    InputError
        If the arrays are not 3-D with the same H and W, or ``output_size``
        is larger than either.

    Examples
    --------
    >>> img = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    >>> a, t = augment_pair(img, img.copy(), np.random.default_rng(1), options=AugmentOptions(noise_std=0, intensity_scale=0, intensity_shift=0))
    >>> bool(np.array_equal(a, t))
    True
    """
    if image.ndim != 3 or target.ndim != 3 or image.shape[1:] != target.shape[1:]:
        raise InputError(f"image and target must be (C, H, W) with equal H, W; got {image.shape} and {target.shape}")
    if output_size is not None and not 1 <= output_size <= min(image.shape[1:]):
        raise InputError(f"output_size must be between 1 and the input size {image.shape[1:]}, got {output_size}")
    img = image
    tgt = target
    if options.flip:
        if rng.random() < 0.5:
            img, tgt = img[:, ::-1], tgt[:, ::-1]
        if rng.random() < 0.5:
            img, tgt = img[:, :, ::-1], tgt[:, :, ::-1]
    if options.rotate90:
        k = int(rng.integers(4))
        img, tgt = np.rot90(img, k, axes=(1, 2)), np.rot90(tgt, k, axes=(1, 2))
    output = img.shape[1:] if output_size is None else (int(output_size), int(output_size))
    top, left = ((n - m) // 2 for n, m in zip(img.shape[1:], output))
    warp = options.rotate or bool(options.zoom)
    elastic = options.elastic and options.elastic_alpha > 0
    if warp or elastic:
        if warp:
            coords = _affine_coords(img.shape[1:], output, rng, options)
        else:
            coords = np.mgrid[top : top + output[0], left : left + output[1]].astype(np.float32)
        if elastic:
            coords += elastic_field(output, rng, alpha=options.elastic_alpha, spacing=int(options.elastic_spacing))
        img = _warp(np.ascontiguousarray(img), coords, order=1)
        tgt = _warp(np.ascontiguousarray(tgt), coords, order=target_order)
    else:
        window = np.s_[:, top : top + output[0], left : left + output[1]]
        img, tgt = img[window], tgt[window]
    img = np.array(img, dtype=np.float32)  # always a fresh, contiguous copy
    tgt = np.array(tgt, dtype=np.float32)
    if options.appearance:
        img = _appearance(img, tgt[0] == 1, rng, options)
    if options.intensity_scale:
        bound = math.log1p(options.intensity_scale)
        img *= np.float32(math.exp(rng.uniform(-bound, bound)))
    if options.intensity_shift:
        img += np.float32(rng.uniform(-options.intensity_shift, options.intensity_shift))
    if options.noise_std:
        sigma = rng.uniform(0.0, options.noise_std)
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return img, tgt


def _appearance(image: np.ndarray, objects: np.ndarray, rng: np.random.Generator, options: AugmentOptions) -> np.ndarray:
    """Other microscopes' appearance on a normalised (C, H, W) patch, in the order light meets them.

    Uneven background, camera offset and quantisation first (so that their
    range is the objects' and not that of saturated ones), then saturated
    objects (the sample), blur (optics), shot noise (detection), gamma
    (display), JPEG (storage). Each change present in ``options`` is applied with
    probability ``options.appearance``; its strength is drawn only then.
    """
    from segtool import appearance as look

    def chance(strength: float) -> bool:
        return bool(strength) and rng.random() < options.appearance

    channels = image.shape[0]
    data = image[0] if channels == 1 else np.moveaxis(image, 0, -1)  # appearance works on (H, W[, C])
    found = objects if objects.any() else None
    if chance(options.gradient):
        offset, signal = float(rng.uniform(0.0, 2000.0)), math.exp(rng.uniform(math.log(64.0), math.log(4096.0)))
        low, high = float(data.min()), float(np.percentile(data, 99.8))
        counts = look.offset_gradient(
            data, rng, offset=offset, signal=signal, gradient=float(rng.uniform(0.0, options.gradient)),
            smooth=bool(rng.random() < 0.5),
        )
        # back to the patch's own units, so that what follows (and the network) sees the usual range
        data = ((counts - np.float32(offset)) * np.float32((high - low) / signal) + np.float32(low)).astype(np.float32)
    if chance(options.blobs):
        if found is not None:
            data = look.saturate_objects(
                data, objects, rng, count=int(rng.integers(1, options.blobs + 1)),
                diameter=max(data.shape[:2]) / 4.0, brightness=float(rng.uniform(3.0, 10.0)),
            )
    if chance(options.blur):
        data = look.gaussian_blur(data, float(rng.uniform(0.0, options.blur)))
    if chance(options.photons):
        count = options.photons * math.exp(rng.uniform(0.0, math.log(100.0)))
        data = look.shot_noise(data, rng, photons=count, foreground=found)
    if chance(options.gamma):
        bound = math.log1p(options.gamma)
        data = look.adjust_gamma(data, math.exp(rng.uniform(-bound, bound)))
    if chance(options.jpeg):
        quality = int(rng.integers(options.jpeg, 96))
        if data.ndim == 2 or data.shape[2] == 3:
            data = look.jpeg_artifacts(data, quality=quality)
        else:  # 2 or 4+ channels: each as its own grey JPEG
            data = np.stack([look.jpeg_artifacts(data[..., c], quality=quality) for c in range(channels)], axis=-1)
    out = data[None] if channels == 1 else np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(out, dtype=np.float32)
