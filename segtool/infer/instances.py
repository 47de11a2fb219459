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
from segtool.labels import label_dtype
from segtool.model.config import TARGETS

__all__ = ["DEFAULT_MIN_SIZE", "DEFAULT_SEED_THRESHOLD", "LABEL_CHANNELS", "maps_to_labels", "number_as_whole"]

#: Default seed threshold per target type.
DEFAULT_SEED_THRESHOLD = {"three_class": 0.5, "distance": 0.4, "three_class_distance": 0.4}

#: The map channels the labelling reads, per target: (foreground or background, seeds). The others are only
#: saved (``--save-prob``), so a schedule that keeps maps only for labelling can keep these two and halve its
#: buffers (``maps_to_labels(..., label_channels_only=True)``).
LABEL_CHANNELS = {"three_class": (0, 1), "distance": (0, 1), "three_class_distance": (0, 3)}

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
    label_channels_only: bool = False,
) -> np.ndarray:
    """Turn activated network maps into instance labels.

    Parameters
    ----------
    maps : (C, H, W) ndarray
        Output of :func:`segtool.model.heads.activate` for one image: 3
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
    label_channels_only : bool, optional
        ``maps`` holds only the two channels :data:`LABEL_CHANNELS` names for
        ``target``, in that order (the labels are the same as from all of
        them).

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
    channels = len(LABEL_CHANNELS[target]) if label_channels_only else TARGETS[target]
    if data.ndim != 3 or data.shape[0] != channels:
        raise InputError(f"target {target!r} needs maps of shape ({channels}, H, W), got {data.shape}")
    first, second = (data[0], data[1]) if label_channels_only else (data[c] for c in LABEL_CHANNELS[target])
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

    seed_map = second
    if target == "three_class":
        foreground = first < np.float32(1.0 - prob_threshold)
        elevation = np.float32(1.0) - second.astype(np.float32, copy=False)
    elif target == "three_class_distance":
        foreground = first < np.float32(1.0 - prob_threshold)
        elevation = -second.astype(np.float32, copy=False)
    else:
        foreground = first > np.float32(prob_threshold)
        elevation = -second.astype(np.float32, copy=False)

    markers = _markers(foreground, seed_map, seed_threshold, min_seed_size, split_height)
    labels = _watershed(elevation, markers, foreground)
    del markers, elevation

    unseeded = foreground & (labels == 0)
    if unseeded.any():
        extra, _ = ndimage.label(unseeded)
        offset = int(labels.max())
        labels[extra > 0] = extra[extra > 0] + offset
    return _finish(labels, min_size)


def _markers(foreground, seed_map, seed_threshold: float, min_seed_size: int, split_height: float | None) -> np.ndarray:
    """The watershed's markers: seed regions labelled in raster order, small ones dropped (numbers kept)."""
    seeds = foreground & (seed_map > np.float32(seed_threshold))
    if split_height is not None:
        seeds = _shape_seeds(seeds, split_height)
    markers, n_seeds = ndimage.label(seeds)
    del seeds
    if n_seeds and min_seed_size > 1 and split_height is None:
        markers = _drop_small(markers, min_seed_size)
    return markers


def number_as_whole(labels: np.ndarray, maps: np.ndarray, *, target: str, prob_threshold: float = 0.5,
                    min_size: int = DEFAULT_MIN_SIZE, seed_threshold: float | None = None,
                    min_seed_size: int | None = None, split_height: float | None = None) -> np.ndarray:
    """Renumber objects found piece by piece as :func:`maps_to_labels` numbers the whole image.

    :func:`maps_to_labels` numbers the objects grown from seeds in the raster
    order of their seeds' first pixels, then the foreground left without a
    seed in the raster order of its first pixels. Labels made band by band
    (:func:`segtool.infer.bands.predict_label_bands`) hold the same objects,
    numbered band by band; this gives them the whole image's numbers, so the
    two paths write identical label images.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Objects (any numbering, 0 background) found on these ``maps`` with these options.
    maps : (C, H, W) ndarray
        The maps they were found on.
    target, prob_threshold, min_size, seed_threshold, min_seed_size, split_height
        As given to :func:`maps_to_labels`; ``split_height`` must be None
        (its seeds depend on each seed region's shape, not on pixels alone).

    Returns
    -------
    labels : (H, W) ndarray of uint16, or uint32 above 65535 objects

    Examples
    --------
    >>> maps = np.zeros((2, 5, 9), np.float32)
    >>> maps[:, 1:4, 1:4] = [[[1]], [[0.9]]]
    >>> maps[:, 1:4, 5:8] = [[[1]], [[0.9]]]
    >>> swapped = np.where(maps_to_labels(maps, target="distance", min_size=1) == 1, 2, 0)
    >>> swapped[:, 5:8] = 1
    >>> relabelled = number_as_whole(swapped * (maps[0] > 0.5), maps, target="distance", min_size=1)
    >>> bool((relabelled == maps_to_labels(maps, target="distance", min_size=1)).all())
    True
    """
    if split_height is not None:
        raise InputError("number_as_whole cannot follow shape-split seeds (split_height)")
    data = np.asarray(maps)
    if target == "three_class":
        foreground, seed_map = data[0] < np.float32(1.0 - prob_threshold), data[1]
    elif target == "three_class_distance":
        foreground, seed_map = data[0] < np.float32(1.0 - prob_threshold), data[3]
    else:
        foreground, seed_map = data[0] > np.float32(prob_threshold), data[1]
    if seed_threshold is None:
        seed_threshold = DEFAULT_SEED_THRESHOLD[target]
    if min_seed_size is None:
        min_seed_size = max(1, int(min_size) // 4)
    markers = _markers(foreground, seed_map, float(seed_threshold), int(min_seed_size), None)
    del foreground
    flat = np.asarray(labels).ravel()
    count = int(flat.max()) if flat.size else 0
    # key of each object: (0, first seed pixel) when grown from a seed, else (1, first pixel); raster order
    key = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    seeded = np.flatnonzero((markers.ravel() > 0) & (flat > 0))
    objects, first = np.unique(flat[seeded], return_index=True)
    key[objects] = seeded[first]
    pixels = np.flatnonzero(flat)
    objects, first = np.unique(flat[pixels], return_index=True)
    no_seed = key[objects] == np.iinfo(np.int64).max
    key[objects[no_seed]] = flat.size + pixels[first[no_seed]]
    present = np.zeros(count + 1, bool)
    present[objects] = True
    present[0] = False
    order = np.flatnonzero(present)[np.argsort(key[present], kind="stable")]
    dtype = label_dtype(order.size)
    lookup = np.zeros(count + 1, dtype)
    lookup[order] = np.arange(1, order.size + 1, dtype=dtype)
    return lookup[np.asarray(labels)]


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
    dtype = label_dtype(count)
    lookup = np.zeros(len(sizes), dtype)
    lookup[keep] = np.arange(1, count + 1, dtype=dtype)
    return lookup[labels]
