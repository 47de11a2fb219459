"""From the network's probability maps to an instance label image.

All target types follow the same recipe: a foreground mask, one seed per
object, a watershed that grows the seeds over the foreground, then small
objects are dropped and labels renumbered 1..N.

``three_class`` maps (background, interior, boundary probabilities)
    foreground: ``1 - background > prob_threshold``; seeds: connected
    components of ``interior > seed_threshold``; the watershed floods
    ``1 - interior``, so neighbouring seeds meet on the boundary ridge.
``distance`` maps (foreground probability, normalised distance)
    foreground: ``foreground > prob_threshold``; seeds: connected components
    of ``distance > seed_threshold`` (the distance is 1 at object centres and
    near 0 where objects touch, so a threshold separates touching objects);
    the watershed floods ``-distance``.
``three_class_distance`` maps (background, interior, boundary, distance)
    foreground as ``three_class``; seeds and watershed as ``distance``: the
    outline comes from the classes, the split between touching objects from
    the learned distance.

A foreground region that holds no seed (a faint object whose interior never
reaches the seed threshold) becomes an object of its own rather than being
lost.

Touching nuclei whose seed regions still touch (small, tightly packed nuclei
often do) can be split by shape: with ``split_height`` set, each seed region
is replaced by the regional maxima of its (lightly smoothed) distance to the
region's edge that rise at least ``split_height`` pixels above the saddle to
any higher maximum. Two discs joined by a neck have two such maxima, one disc
has one. This is how classical pipelines split touching nuclei, applied to the
network's seed regions instead of a thresholded image; on the shipped model's
validation images it fixed more merges than it created splits.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segtool.errors import InputError
from segtool.unet.config import TARGETS

__all__ = ["DEFAULT_MIN_SIZE", "DEFAULT_SEED_THRESHOLD", "maps_to_labels"]

#: Default seed threshold per target type.
DEFAULT_SEED_THRESHOLD = {"three_class": 0.5, "distance": 0.4, "three_class_distance": 0.4}

#: Default smallest object kept, in pixels.
DEFAULT_MIN_SIZE = 16


def _check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {value}")
    return value


def maps_to_labels(
    maps: np.ndarray,
    *,
    target: str,
    prob_threshold: float = 0.5,
    min_size: int = DEFAULT_MIN_SIZE,
    seed_threshold: float | None = None,
    min_seed_size: int | None = None,
    split_height: float | None = None,
) -> np.ndarray:
    """Turn activated network maps into instance labels.

    Parameters
    ----------
    maps : (C, H, W) ndarray
        Output of :func:`segtool.unet.heads.activate` for one image: 3
        channels (background, interior, boundary) for ``"three_class"``,
        2 (foreground, normalised distance) for ``"distance"``, 4
        (background, interior, boundary, distance) for
        ``"three_class_distance"``. Not modified.
    target : {"three_class", "distance", "three_class_distance"}
        Which kind of maps these are.
    prob_threshold : float, optional
        A pixel is foreground when its foreground probability exceeds this.
    min_size : int, optional
        Objects with fewer pixels are removed (0 keeps everything).
    seed_threshold : float, optional
        Interior probability (three_class, default 0.5) or normalised
        distance (distance and three_class_distance, default 0.4) above which
        a pixel belongs to an object's seed.
    min_seed_size : int, optional
        Seeds with fewer pixels are ignored, so noise cannot split an object.
        Default ``max(1, min_size // 4)``. Not used with ``split_height``,
        whose seeds are small maxima by design.
    split_height : float, optional
        Split seed regions by shape: seeds become the maxima of the distance
        to the seed region's edge that stand at least this many pixels above
        their surroundings (h-maxima). ``None`` (default) keeps each seed
        region whole.

    Returns
    -------
    labels : (H, W) ndarray of uint16, or uint32 above 65535 objects
        0 is background, objects are numbered 1..N consecutively.

    Raises
    ------
    InputError
        If ``target`` is unknown, ``maps`` has the wrong shape for it, a
        threshold is outside [0, 1] or ``split_height`` is not positive.

    Examples
    --------
    >>> maps = np.zeros((2, 5, 9), np.float32)
    >>> maps[:, 1:4, 1:4] = [[[1]], [[0.9]]]
    >>> maps[:, 1:4, 5:8] = [[[1]], [[0.9]]]
    >>> labels = maps_to_labels(maps, target="distance", min_size=1)
    >>> labels.dtype, int(labels.max()), int(labels[2, 2]), int(labels[2, 6])
    (dtype('uint16'), 2, 1, 2)
    """
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    data = np.asarray(maps)
    channels = TARGETS[target]
    if data.ndim != 3 or data.shape[0] != channels:
        raise InputError(f"target {target!r} needs maps of shape ({channels}, H, W), got {data.shape}")
    prob_threshold = _check_fraction("prob_threshold", prob_threshold)
    if seed_threshold is None:
        seed_threshold = DEFAULT_SEED_THRESHOLD[target]
    seed_threshold = _check_fraction("seed_threshold", seed_threshold)
    if isinstance(min_size, bool) or int(min_size) < 0:
        raise InputError(f"min_size must be >= 0, got {min_size!r}")
    min_size = int(min_size)
    if min_seed_size is None:
        min_seed_size = max(1, min_size // 4)
    min_seed_size = int(min_seed_size)
    if split_height is not None:
        split_height = _check_positive("split_height", split_height)

    if target == "three_class":
        foreground = data[0] < np.float32(1.0 - prob_threshold)
        seed_map = data[1]
        elevation = np.float32(1.0) - data[1].astype(np.float32, copy=False)
    elif target == "three_class_distance":
        foreground = data[0] < np.float32(1.0 - prob_threshold)
        seed_map = data[3]
        elevation = -data[3].astype(np.float32, copy=False)
    else:
        foreground = data[0] > np.float32(prob_threshold)
        seed_map = data[1]
        elevation = -data[1].astype(np.float32, copy=False)

    seeds = foreground & (seed_map > np.float32(seed_threshold))
    if split_height is not None:
        seeds = _shape_seeds(seeds, split_height)
    markers, n_seeds = ndimage.label(seeds)
    del seeds
    if n_seeds and min_seed_size > 1 and split_height is None:
        markers = _drop_small(markers, min_seed_size)
    labels = _watershed(elevation, markers, foreground)
    del markers, elevation

    unseeded = foreground & (labels == 0)
    if unseeded.any():
        extra, _ = ndimage.label(unseeded)
        offset = int(labels.max())
        labels[extra > 0] = extra[extra > 0] + offset
    return _finish(labels, min_size)


def _check_positive(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not value > 0 or value == float("inf"):
        raise InputError(f"{name} must be a positive number, got {value}")
    return value


#: Gaussian smoothing (pixels) of the distance map before its maxima are taken. Without it the ridge
#: of an elongated seed region has many one-pixel bumps, each of which would become a seed. 1-2 px
#: scored within 0.001 AP of each other on v5's validation images, 0.5 and 3 px lower (MODELS.md).
_SPLIT_SMOOTHING = 1.5


def _shape_seeds(regions: np.ndarray, height: float) -> np.ndarray:
    """One seed per "disc" of each region: h-maxima of the smoothed distance to the region's edge."""
    from skimage.morphology import h_maxima

    if not regions.any():
        return regions
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(regions), _SPLIT_SMOOTHING)
    region_labels, _ = ndimage.label(regions)
    seeds = np.zeros_like(regions)
    # Region by region: h-maxima over the whole image sorts every pixel (3x slower on a dense
    # 2048^2 image), and a region's maxima should not depend on its neighbours anyway.
    for index, box in enumerate(ndimage.find_objects(region_labels), start=1):
        own = region_labels[box] == index
        local = np.where(own, distance[box], 0.0)
        # A region too small or flat to hold an h-maximum keeps itself as the seed, so
        # splitting never loses an object the plain seeds would have found.
        seed = own
        if local.max() >= height:
            peaks = own & h_maxima(local, height).astype(bool)
            if peaks.any():
                seed = peaks
        seeds[box] |= seed
    return seeds


def _watershed(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    if not markers.any():
        return np.zeros(markers.shape, np.int32)
    return watershed(elevation, markers, mask=mask).astype(np.int32, copy=False)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero out labelled regions smaller than ``min_size`` (labels keep their numbers)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _finish(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and renumber the rest 1..N in label order."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    count = int(keep.sum())
    dtype = np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32
    lookup = np.zeros(len(sizes), dtype)
    lookup[keep] = np.arange(1, count + 1, dtype=dtype)
    return lookup[labels]
