"""Training data in memory: normalised images, targets, and a patch sampler.

All image/label pairs are loaded once, normalised once (with the same
:func:`segtool.normalize.normalize_percentile` prediction uses) and turned
into targets once; patches are then cut and augmented on the fly. Nothing
here reads files: callers pass arrays (the CLI reads them with
:mod:`segtool.io`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segtool.errors import InputError
from segtool.labels import check_labels, label_dtype
from segtool.normalize import normalize_percentile
from segtool.train.augment import AugmentOptions, augment_pair, context_margin
from segtool.model.config import UNetConfig
from segtool.intake import apply_input_transform
from segtool.train.targets import make_target, three_class_target

__all__ = [
    "PatchSampler",
    "Sample",
    "prepare_sample",
    "prepare_samples",
    "split_validation",
    "summarize_pairs",
]


@dataclass
class Sample:
    """One training image ready for patch sampling.

    Attributes
    ----------
    image : (C, H, W) ndarray of float32
        Percentile-normalised image.
    labels : (H, W) ndarray of uint16/uint32
        The instance labels (for the validation metric).
    target : (K, H, W) ndarray of float32
        From :func:`segtool.train.targets.make_target`.
    foreground : (F,) ndarray of int64
        Flat indices of the object pixels, to bias patch sampling.
    name : str
    """

    image: np.ndarray
    labels: np.ndarray
    target: np.ndarray
    foreground: np.ndarray
    name: str = ""


def _as_channels(image: np.ndarray, in_channels: int, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[np.newaxis]
    if image.ndim != 3 or image.shape[0] != in_channels:
        raise InputError(
            f"{name}: expected a 2-D image{'' if in_channels == 1 else f' with {in_channels} channels first'}, "
            f"got shape {np.shape(image)}"
        )
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating) or image.dtype == bool):
        raise InputError(f"{name}: unsupported image dtype {image.dtype}")
    return image


def _checked_mask(labels: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The mask as uint16/uint32 labels, by the one label check; errors name the file."""
    try:
        labels = check_labels(labels, role="mask")
        if labels.shape != shape:
            raise InputError(f"mask shape {labels.shape} differs from image shape {shape}")
        return labels.astype(label_dtype(labels.max() if labels.size else 0), copy=False)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None


def prepare_sample(image: np.ndarray, labels: np.ndarray, config: UNetConfig, *, name: str = "") -> Sample:
    """Normalise an image and derive its target from instance labels.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        Raw image; channels first when ``config.in_channels > 1``.
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    config : UNetConfig
        Supplies the input transform, ``in_channels``, the percentiles and the target type.
    name : str, optional
        Used in error messages.

    Returns
    -------
    Sample

    Raises
    ------
    InputError
        Wrong dimensions or channels, shapes that differ, labels that are not
        integers or are negative.

    Examples
    --------
    >>> s = prepare_sample(np.arange(16).reshape(4, 4), np.eye(4, dtype=int), UNetConfig(depth=1, patch_size=4))
    >>> s.image.shape, s.target.shape, s.foreground.tolist()
    ((1, 4, 4), (1, 4, 4), [0, 5, 10, 15])
    """
    name = name or "image"
    try:
        image = apply_input_transform(image, config.input)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    image = _as_channels(image, config.in_channels, name)
    labels = _checked_mask(labels, image.shape[1:], name)
    normalised = np.stack(
        [normalize_percentile(channel, config.norm_low, config.norm_high) for channel in image]
    )
    target = make_target(labels, config.target)
    foreground = np.flatnonzero(labels)
    return Sample(image=normalised, labels=labels, target=target, foreground=foreground, name=name)


def prepare_samples(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    config: UNetConfig,
    *,
    names: Sequence[str] | None = None,
) -> list[Sample]:
    """:func:`prepare_sample` for every ``(image, labels)`` pair."""
    names = list(names) if names is not None else [f"pair {i}" for i in range(len(pairs))]
    return [prepare_sample(img, lab, config, name=n) for (img, lab), n in zip(pairs, names)]


def split_validation(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n`` whole images into training and validation indices.

    At least one image is held out when ``fraction > 0`` and at least one is
    kept for training.

    Returns
    -------
    train, val : ndarray of int, sorted

    Raises
    ------
    InputError
        If ``fraction`` is outside [0, 1) or there are too few images.

    Examples
    --------
    >>> tr, va = split_validation(10, 0.2, np.random.default_rng(0))
    >>> len(tr), len(va), sorted(set(tr) | set(va)) == list(range(10))
    (8, 2, True)
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return np.arange(n), np.arange(0)
    if n < 2:
        raise InputError(f"need at least 2 images to hold some out for validation, got {n}")
    n_val = min(max(1, round(n * fraction)), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def summarize_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Counts and a content hash of a list of ``(image, labels)`` pairs.

    The SHA-256 covers every pair's shapes, dtypes and pixel bytes in order,
    so two runs on the same data get the same hash whatever the file names.
    ``median_diameter`` is the median equivalent-circle diameter of the
    objects in pixels (prediction can rescale images whose nuclei differ).

    Examples
    --------
    >>> s = summarize_pairs([(np.zeros((2, 3), np.uint8), np.ones((2, 3), np.uint16))])
    >>> s["images"], s["pixels"], s["objects"], s["median_diameter"], len(s["sha256"])
    (1, 6, 1, 2.76, 64)
    """
    digest = hashlib.sha256()
    pixels = 0
    areas = []
    for image, labels in pairs:
        for array in (np.asarray(image), np.asarray(labels)):
            digest.update(f"{array.shape}{array.dtype.str}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        pixels += int(np.asarray(labels).size)
        counts = np.bincount(np.asarray(labels).ravel())[1:]
        areas.append(counts[counts > 0])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    diameter = float(np.median(np.sqrt(4.0 * areas / np.pi))) if areas.size else None
    return {
        "images": len(pairs),
        "pixels": pixels,
        "objects": int(areas.size),
        "median_diameter": None if diameter is None else round(diameter, 2),
        "sha256": digest.hexdigest(),
    }


def _window(array: np.ndarray, y0: int, x0: int, size: int, margin: int) -> np.ndarray:
    """The ``size`` window at (y0, x0) plus ``margin`` on every side, mirrored where it leaves the image."""
    height, width = array.shape[1:]
    top, left = y0 - margin, x0 - margin
    bottom, right = y0 + size + margin, x0 + size + margin
    inside = array[:, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    pads = [(0, 0), (max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width))]
    return np.pad(inside, pads, mode="symmetric") if any(any(p) for p in pads) else inside


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
    pads = [(0, 0)] + [(0, max(0, size - n)) for n in array.shape[1:]]
    if all(after == 0 for _, after in pads):
        return array
    return np.pad(array, pads, mode="symmetric")


class PatchSampler:
    """Draw random, augmented training patches from samples in memory.

    Images are chosen with probability proportional to the square root of
    their area (large images give more patches than small ones, without
    drowning them). With probability ``foreground_fraction`` the patch is
    placed to contain a randomly chosen object pixel, otherwise uniformly.
    Images smaller than the patch are mirrored up to its size. When the
    augmentation rotates by any angle or zooms, the patch is cut with a
    margin of surrounding image (:func:`segtool.train.augment.context_margin`)
    that the warp reads from.

    With zoom on and a target that has classes (``target`` is
    ``"three_class"`` or ``"three_class_distance"``), the instance labels are
    warped with the patch and its class channel is made again from them:
    warping the class map itself by nearest neighbour would drop parts of
    the one-pixel boundaries between touching objects when zooming out (and
    thicken them when zooming in), teaching the network merged objects. The
    normalised distance channel is scale-free and is warped as it is.

    Parameters
    ----------
    samples : sequence of Sample
    patch_size : int
    rng : numpy.random.Generator
        Every random draw (image, position, augmentation) comes from it.
    foreground_fraction : float, optional
    augment : AugmentOptions, optional
    target : str, optional
        The target type of the samples (see above); None: targets are warped as they are.

    Examples
    --------
    >>> s = prepare_sample(np.eye(8) * 9, np.eye(8, dtype=int), UNetConfig(depth=1, patch_size=4))
    >>> x, y = PatchSampler([s], patch_size=4, rng=np.random.default_rng(0)).batch(3)
    >>> x.shape, y.shape, x.dtype
    ((3, 1, 4, 4), (3, 1, 4, 4), dtype('float32'))
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        patch_size: int,
        rng: np.random.Generator,
        foreground_fraction: float = 0.8,
        augment: AugmentOptions | None = None,
        target: str | None = None,
    ) -> None:
        if not samples:
            raise InputError("no training images")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground fraction must be in [0, 1], got {foreground_fraction}")
        self.patch_size = int(patch_size)
        self.rng = rng
        self.foreground_fraction = float(foreground_fraction)
        self.augment = augment if augment is not None else AugmentOptions()
        self._margin = context_margin(self.patch_size, self.augment)
        self._images = [_pad_to(s.image, self.patch_size) for s in samples]
        self._targets = [_pad_to(s.target, self.patch_size) for s in samples]
        self._relabel = bool(self.augment.zoom) and target in ("three_class", "three_class_distance")
        if self._relabel:  # labels ride along as a last target channel (float32 is exact below 2**24 objects)
            self._targets = [
                np.concatenate([t, _pad_to(s.labels[None].astype(np.float32), self.patch_size)])
                for t, s in zip(self._targets, samples)
            ]
        self._foreground = [s.foreground for s in samples]
        self._widths = [s.image.shape[2] for s in samples]
        areas = np.array([s.image.shape[1] * s.image.shape[2] for s in samples], np.float64)
        weights = np.sqrt(areas)
        self._weights = weights / weights.sum()

    def _origin(self, index: int, rng: np.random.Generator) -> tuple[int, int]:
        height, width = self._images[index].shape[1:]
        size = self.patch_size
        foreground = self._foreground[index]
        if foreground.size and rng.random() < self.foreground_fraction:
            flat = int(foreground[rng.integers(foreground.size)])
            y, x = divmod(flat, self._widths[index])
            y0 = y - int(rng.integers(size))
            x0 = x - int(rng.integers(size))
        else:
            y0 = int(rng.integers(height - size + 1))
            x0 = int(rng.integers(width - size + 1))
        return min(max(y0, 0), height - size), min(max(x0, 0), width - size)

    def sample(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One augmented ``(image (C, P, P), target (K, P, P))`` patch.

        Every draw comes from ``rng``, by default the sampler's own generator.
        """
        rng = self.rng if rng is None else rng
        index = int(rng.choice(len(self._images), p=self._weights))
        y0, x0 = self._origin(index, rng)
        if not self._margin:
            window = np.s_[:, y0 : y0 + self.patch_size, x0 : x0 + self.patch_size]
            patch = augment_pair(self._images[index][window], self._targets[index][window], rng, options=self.augment)
        else:
            image, target = (_window(a[index], y0, x0, self.patch_size, self._margin) for a in (self._images, self._targets))
            patch = augment_pair(image, target, rng, options=self.augment, output_size=self.patch_size)
        if not self._relabel:
            return patch
        image, target = patch
        target[0] = three_class_target(target[-1].astype(np.int64))
        return image, np.ascontiguousarray(target[:-1])

    def batch(self, size: int, rng: np.random.Generator | None = None, *,
              out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``size`` patches stacked as ``(B, C, P, P)`` and ``(B, K, P, P)`` float32.

        Every draw comes from ``rng``, by default the sampler's own generator
        (a worker process passes a generator of its own per batch). With
        ``out``, the patches are written into those two arrays (a worker's
        shared-memory slot) and they are returned; the draws are the same.
        """
        if out is not None:
            for i in range(size):
                out[0][i], out[1][i] = self.sample(rng)
            return out
        patches = [self.sample(rng) for _ in range(size)]
        return np.stack([p[0] for p in patches]), np.stack([p[1] for p in patches])
