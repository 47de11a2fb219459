"""How large are the objects in an image? The network's own answer, from a ladder of scales.

A U-Net trained on nuclei of about ``d`` pixels cuts nuclei four times that
size into pieces and misses or merges nuclei a quarter of it. Its maps say
so: on objects of the size it knows, the class probabilities are decisive
(background, interior and boundary near 0 or 1); on objects far from it they
are not, and the pieces it finds are ragged. So the image is shown to the
network at a few scales, a factor of two apart, on a window of at most
:attr:`SizeOptions.window` network pixels each; of the neighbouring scales
that measure the same diameter, the pair whose foreground is the most
confidently classified wins (:func:`choose_diameter`), and the median
diameter of the objects found there, mapped back to the image's pixels, is
the estimate.

The final scale then brings that diameter to the model's training diameter,
unless it is within the sizes the model was trained on and the network is
as sure of the image at its own size; an image of small objects is enlarged
only to the edge of that band (:func:`scale_for_estimate`).

Validation (MODELS.md, "Object size found automatically"): on the
held-out training images resized by 0.5 to 4, the estimate is within
1.41x of the true median diameter for 89-96 % of the images and within 2x
for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from segtool.errors import InputError
from segtool.infer.parts import PARTS_SIZE_RATIO, RungView, are_parts_of

__all__ = [
    "SizeEstimate",
    "SizeOptions",
    "choose_diameter",
    "choose_window",
    "estimate_for_model",
    "estimate_size",
    "map_confidence",
    "median_diameter",
    "min_size_at_scale",
    "resize_channels",
    "sample_window",
    "scale_for_estimate",
    "thumbnail_step",
]


@dataclass(frozen=True)
class SizeOptions:
    """How the object size is estimated (see :func:`estimate_size`).

    Attributes
    ----------
    scales : tuple of float
        The ladder: factors the image is resized by before each network pass.
    window : int
        Largest side, in network pixels, of the window each pass sees (the
        cost of the estimate: five passes of 512² are a sixteenth of a
        2048² image each).
    min_objects : int
        A scale whose window holds fewer objects does not vote (unless no
        scale has that many).
    agreement : float
        Neighbouring scales agree when their diameters are within this
        factor of each other (:func:`choose_diameter`).
    keep_within : float
        Keep the image's own size (scale 1) when the estimated diameter is
        within this factor of the model's training diameter and the network
        is at least as confident there (:func:`scale_for_estimate`). The
        default equals ``keep_always`` (the confidences never keep a size):
        chosen on the 56 validation images of ``nuclei`` v12 resized 1x, 2x
        and 3x, mean AP@0.5 0.798 against 0.786 for 3.0 (MODELS.md).
    keep_always : float
        Keep the image's own size when the estimate is within this factor of
        the training diameter, whatever the confidences (a resize that small
        changes little but costs time, and moved more objects past IoU 0.7
        the wrong way than the right way on validation).
    enlarge_to_edge : bool
        An image whose objects are smaller than the kept band is enlarged
        only until they reach the band's lower edge (the training diameter
        divided by ``keep_always``), not to the training diameter itself.
        Enlarging adds no detail: the interpolated nuclei are blurred, and
        the network split dense small ones into extra objects the more they
        were enlarged (MODELS.md). Chosen on the 56 validation images of
        ``nuclei`` v12 resized 1x, 2x and 3x: mean AP@0.5 0.805 against
        0.799 (1x: 0.821 against 0.800).
    shrink_to_edge : bool
        The same for an image whose objects are larger than the band: shrunk
        only to its upper edge (the training diameter times ``keep_always``).
        Off: shrinking averages pixels as a coarser camera would, and on the
        same validation images both edges together scored 0.801 (3x: 0.791
        against 0.805).
    whole_over_parts : bool
        Whole objects win over their parts (bright chromocentres inside mouse
        nuclei; :func:`segtool.infer.parts.are_parts_of`). :func:`estimate_for_model`
        turns it off for a model that reads stained tissue, where what a
        coarse rung finds whole is tissue holding nuclei.
    min_scale, max_scale : float
        Bounds of the final scale.

    Examples
    --------
    >>> SizeOptions().scales
    (0.125, 0.25, 0.5, 1.0, 2.0)
    """

    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
    window: int = 384
    min_objects: int = 3
    agreement: float = 1.5
    keep_within: float = 1.3
    keep_always: float = 1.3
    enlarge_to_edge: bool = True
    shrink_to_edge: bool = False
    whole_over_parts: bool = True
    min_scale: float = 0.05
    max_scale: float = 4.0

    def __post_init__(self) -> None:
        if not self.scales or any(not (math.isfinite(s) and s > 0) for s in self.scales):
            raise InputError(f"ladder scales must be positive numbers, got {self.scales!r}")
        if int(self.window) < 32:
            raise InputError(f"size window must be at least 32 pixels, got {self.window!r}")
        if not self.keep_within >= self.keep_always >= 1.0:
            raise InputError(f"need keep_within >= keep_always >= 1, got {self.keep_within!r} and {self.keep_always!r}")


@dataclass(frozen=True)
class SizeEstimate:
    """The outcome of :func:`estimate_size`.

    Attributes
    ----------
    diameter : float or None
        Median object diameter in the image's pixels (None: no object found
        at any scale).
    scale : float
        Resize factor for the network (1.0 when no estimate was possible).
    ladder : tuple of (scale, objects, median diameter in network pixels, confidence)
        What each pass saw, for the record.
    """

    diameter: float | None
    scale: float
    ladder: tuple[tuple[float, int, float, float], ...] = ()


def median_diameter(labels: np.ndarray) -> tuple[float, int]:
    """Median equivalent-circle diameter of the objects of a label image, and their number.

    Examples
    --------
    >>> labels = np.zeros((10, 10), np.uint16); labels[1:5, 1:5] = 1; labels[6:8, 6:8] = 2
    >>> d, n = median_diameter(labels)
    >>> round(d, 2), n
    (3.39, 2)
    """
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if not areas.size:
        return 0.0, 0
    return float(np.median(2.0 * np.sqrt(areas / np.pi))), int(areas.size)


def map_confidence(maps: np.ndarray, target: str) -> float:
    """How decisively the network classified its foreground: mean top class probability there, 0 to 1.

    ``three_class`` targets: the largest of the background, interior and
    boundary probabilities, averaged over pixels more likely foreground
    than background. ``distance``: the foreground probability over the
    same pixels. 0.0 when there is no foreground.

    Examples
    --------
    >>> maps = np.zeros((4, 2, 2), np.float32); maps[0] = 1.0
    >>> maps[:, 0, 0] = [0.1, 0.8, 0.1, 0.5]; maps[:, 0, 1] = [0.2, 0.4, 0.4, 0.5]
    >>> round(map_confidence(maps, "three_class_distance"), 3)
    0.6
    """
    if target.startswith("three_class"):
        foreground = maps[0] < 0.5
        top = np.max(maps[:3], axis=0)
    else:
        foreground = maps[0] >= 0.5
        top = maps[0]
    if not foreground.any():
        return 0.0
    return float(top[foreground].mean())


def choose_window(image: np.ndarray, side: int) -> tuple[slice, slice]:
    """The ``side`` x ``side`` window (clipped to the image) that holds the most foreground.

    Foreground: pixels above the mean of the normalised image's first
    channel, counted on a coarse grid so the search is cheap. Every ladder
    pass looks at windows centred on the same point, so the scales compete
    on the same objects.

    Parameters
    ----------
    image : (C, H, W) ndarray
        Normalised image.
    side : int
        Window side in the image's pixels.

    Examples
    --------
    >>> img = np.zeros((1, 100, 100), np.float32); img[0, 70:90, 60:80] = 1
    >>> rows, cols = choose_window(img, 40)
    >>> rows.start <= 70 and rows.stop >= 90 and cols.start <= 60 and cols.stop >= 80
    True
    """
    height, width = image.shape[-2:]
    if side >= height and side >= width:
        return slice(0, height), slice(0, width)
    plane = image[0]
    step = max(1, side // 8)
    rows, cols = height // step, width // step
    if rows == 0 or cols == 0:
        return slice(0, min(side, height)), slice(0, min(side, width))
    coarse = plane[: rows * step, : cols * step].reshape(rows, step, cols, step).mean(axis=(1, 3))
    mask = (coarse > plane.mean()).astype(np.float64)
    cells = min(rows, max(1, side // step)), min(cols, max(1, side // step))
    # sum of the mask over every window of `cells` by a summed-area table
    table = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (table[cells[0]:, cells[1]:] - table[: rows - cells[0] + 1, cells[1]:]
            - table[cells[0]:, : cols - cells[1] + 1] + table[: rows - cells[0] + 1, : cols - cells[1] + 1])
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    centre = (int((top + cells[0] / 2) * step), int((left + cells[1] / 2) * step))
    return _window_around(centre[0], side, height), _window_around(centre[1], side, width)


def thumbnail_step(shape: tuple[int, int], longest: int = 2048) -> int:
    """Stride of the thumbnail :func:`sample_window` looks at: its longer side at most ``longest`` pixels.

    Examples
    --------
    >>> thumbnail_step((40000, 30000)), thumbnail_step((1000, 800))
    (20, 1)
    """
    return max(1, math.ceil(max(int(n) for n in shape) / longest))


def sample_window(thumbnail: np.ndarray, step: int, shape: tuple[int, int],
                  options: SizeOptions = SizeOptions()) -> tuple[slice, slice]:
    """The part of a large image the size estimate reads: all the ladder's windows, around its densest foreground.

    The ladder's widest window is ``options.window / min(options.scales)``
    image pixels (3072 by default); :func:`estimate_size` on that part sees
    the same windows as on the whole image when the part is centred where
    the whole image's foreground is densest. That centre is found on a
    thumbnail (every ``step``-th pixel, read in one pass), with the same
    rule as :func:`choose_window`.

    Parameters
    ----------
    thumbnail : (h, w) ndarray
        ``image[::step, ::step]``, normalised or not (only its ordering counts).
    step : int
    shape : (int, int)
        The image's size.
    options : SizeOptions, optional

    Returns
    -------
    (slice, slice)
        Rows and columns of the image to read (the whole image when it is
        no larger than the widest window).

    Examples
    --------
    >>> thumb = np.zeros((100, 100), np.float32); thumb[80:95, 10:30] = 1
    >>> rows, cols = sample_window(thumb, 40, (4000, 4000))
    >>> rows.start <= 3200 and rows.stop >= 3800 and cols.start <= 400 and cols.stop >= 1200, rows.stop - rows.start
    (True, 3072)
    """
    side = int(math.ceil(options.window / min(options.scales)))
    height, width = (int(n) for n in shape)
    if side >= height and side >= width:
        return slice(0, height), slice(0, width)
    plane = np.asarray(thumbnail, dtype=np.float32)[np.newaxis]
    rows, cols = choose_window(plane, max(1, math.ceil(side / step)))
    centre = ((rows.start + rows.stop) // 2 * step, (cols.start + cols.stop) // 2 * step)
    return _window_around(centre[0], side, height), _window_around(centre[1], side, width)


def _window_around(centre: int, side: int, length: int) -> slice:
    start = min(max(0, centre - side // 2), max(0, length - side))
    return slice(start, min(length, start + side))


def estimate_size(
    normalized: np.ndarray,
    segment: Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]],
    *,
    target: str,
    trained_diameter: float,
    options: SizeOptions = SizeOptions(),
) -> SizeEstimate:
    """Estimate the median object diameter of an image, and the scale that brings it to the training size.

    Parameters
    ----------
    normalized : (C, H, W) ndarray of float32
        The normalised image at its own size. Not modified.
    segment : callable
        ``segment(windows) -> [(maps, labels), ...]`` for a list of (C, h, w)
        windows: the network and its post-processing, at each window's own
        size (one call, so a network can take the windows as one batch).
    target : str
        The model's target (how to read the maps' confidence).
    trained_diameter : float
        Median object diameter of the model's training data, in pixels.
    options : SizeOptions, optional

    Returns
    -------
    SizeEstimate

    Raises
    ------
    InputError
        If ``normalized`` is not (C, H, W) or ``trained_diameter`` is not positive.

    Examples
    --------
    A stand-in network that finds discs and is most confident when they are
    10 pixels across:

    >>> from skimage.measure import label
    >>> yy, xx = np.mgrid[:200, :200]
    >>> image = (((yy % 40) - 20) ** 2 + ((xx % 40) - 20) ** 2 < 100).astype(np.float32)[None]
    >>> def segment_one(window):
    ...     labels = label(window[0] > 0.5)
    ...     d, _ = median_diameter(labels)
    ...     confidence = 1.0 / (1.0 + abs(d - 10.0))
    ...     maps = np.stack([1 - window[0], window[0] * confidence, window[0] * (1 - confidence) / 2, window[0]])
    ...     return maps, labels
    >>> def segment(windows):
    ...     return [segment_one(w) for w in windows]
    >>> est = estimate_size(image, segment, target="three_class_distance", trained_diameter=10.0)
    >>> round(est.diameter, -1), round(est.scale, 1)
    (20.0, 0.5)
    """
    if normalized.ndim != 3 or 0 in normalized.shape:
        raise InputError(f"image must be (C, H, W), got shape {normalized.shape}")
    if not (math.isfinite(trained_diameter) and trained_diameter > 0):
        raise InputError(f"training diameter must be positive, got {trained_diameter!r}")
    rungs, windows, places = [], [], []
    for scale in sorted(options.scales):
        side = int(math.ceil(options.window / scale))
        rows, cols = choose_window(normalized, side)
        window = normalized[:, rows, cols]
        size = (max(1, round(window.shape[1] * scale)), max(1, round(window.shape[2] * scale)))
        if min(size) < 16:
            continue  # too few pixels for the network to see anything
        rungs.append(float(scale))
        windows.append(_shrink_or_resize(window, scale, size))
        places.append((rows, cols))
    # The rungs up to the image's own size go through the network together; enlarging (the costliest rung) only
    # when the image's own size does not already show objects of about the training size.
    views: dict[float, RungView] = {}  # what each rung saw, for the whole-over-parts test

    def run(ks: list[int]) -> list[tuple[float, int, float, float]]:
        results = segment([windows[k] for k in ks])
        for k, (_, labels) in zip(ks, results):
            views[rungs[k]] = RungView(rungs[k], *places[k], labels)
        return _measure([rungs[k] for k in ks], results, target)

    ladder = run([k for k, scale in enumerate(rungs) if scale <= 1.0])
    own = [step for step in ladder if step[0] == 1.0]
    enlarge = not own or own[0][1] < options.min_objects or own[0][2] < trained_diameter / options.agreement
    rest = [k for k, scale in enumerate(rungs) if scale > 1.0] if enlarge else []
    if rest:
        ladder += run(rest)
    vote = _vote(ladder, options, views if options.whole_over_parts else None)
    if vote is None:
        return SizeEstimate(diameter=None, scale=1.0, ladder=tuple(ladder))
    confidence, diameter = vote
    own = [step for step in ladder if step[0] == 1.0 and step[1] >= options.min_objects]
    scale = scale_for_estimate(diameter, trained_diameter, options, own_confidence=own[0][3] if own else 0.0,
                               best_confidence=confidence)
    return SizeEstimate(diameter=diameter, scale=scale, ladder=tuple(ladder))


def choose_diameter(ladder, options: SizeOptions = SizeOptions(), views: dict | None = None) -> float | None:
    """The diameter the ladder's passes agree on (see :func:`estimate_size`); None when no pass found objects.

    Two neighbouring rungs *agree* when the diameters they measured, in the
    image's pixels, are within :attr:`SizeOptions.agreement` of each other:
    objects of the size the network knows are found whole at both scales,
    while pieces of objects too large for it halve in size from one rung to
    the next, and clusters of objects too small for it fall apart. Of the
    agreeing pairs the more confident one (mean :func:`map_confidence`) wins,
    with the geometric mean of its two diameters; without one, the most
    confident single rung. Rungs with fewer than
    :attr:`SizeOptions.min_objects` objects take part only when no rung has
    that many.

    With ``views`` (each rung's :class:`RungView`, by scale), whole objects
    win over their parts: when a finer agreeing pair wins on confidence but
    its objects are parts of the objects of a coarser pair at least
    :data:`segtool.infer.parts.PARTS_SIZE_RATIO` times as wide (:func:`segtool.infer.parts.are_parts_of`: bright
    chromocentres inside mouse nuclei), the coarser pair's diameter is taken.

    Parameters
    ----------
    ladder : sequence of (scale, objects, median diameter in network pixels, confidence)
    options : SizeOptions, optional
    views : dict of float to RungView, optional

    Examples
    --------
    Whole nuclei at 1/8 and 1/4 (80 px), pieces at 1/2 and 1:

    >>> choose_diameter([(0.125, 9, 10.0, 0.9), (0.25, 9, 20.0, 0.93), (0.5, 40, 18.0, 0.8), (1.0, 90, 16.0, 0.7)])
    80.0
    """
    vote = _vote(ladder, options, views)
    return None if vote is None else vote[1]


def _vote(ladder, options: SizeOptions, views=None) -> tuple[float, float] | None:
    """(confidence, diameter) of the winner of :func:`choose_diameter`; with the rungs' ``views``, whole objects
    win over their parts (:func:`segtool.infer.parts.are_parts_of`)."""
    voters = [step for step in ladder if step[1] >= options.min_objects] or [step for step in ladder if step[1] > 0]
    if not voters:
        return None
    pairs = []
    for finer, coarser in ((b, a) for a, b in zip(voters, voters[1:])):
        if finer[0] > 2.0 * coarser[0] * (1 + 1e-9):
            continue  # not neighbours: a rung between them found too few objects
        d_coarse, d_fine = coarser[2] / coarser[0], finer[2] / finer[0]
        if d_coarse > 0 and d_fine > 0 and max(d_coarse, d_fine) <= options.agreement * min(d_coarse, d_fine):
            pairs.append(((coarser[3] + finer[3]) / 2.0, math.sqrt(d_coarse * d_fine), coarser[0], finer[0]))
    if pairs:
        confidence, diameter, winner_coarser_rung, _ = max(pairs)
        if views:
            # Bright spots inside large nuclei (chromocentres) are objects of their own size at the fine rungs, often
            # found more confidently than the nuclei: a pair of objects at least twice as wide, seen at its finer
            # rung, whose objects hold the winner's (seen at the winner's coarser rung) wins instead.
            for other_confidence, other_diameter, _, other_finer_rung in sorted(pairs, reverse=True):
                if other_diameter >= PARTS_SIZE_RATIO * diameter and are_parts_of(views[winner_coarser_rung],
                                                                                  views[other_finer_rung]):
                    confidence, diameter = other_confidence, other_diameter
                    break
        return float(confidence), float(diameter)
    best = max(voters, key=lambda step: step[3])
    return float(best[3]), float(best[2] / best[0])


def scale_for_estimate(diameter: float, trained_diameter: float, options: SizeOptions = SizeOptions(), *,
                       own_confidence: float | None = None, best_confidence: float | None = None) -> float:
    """The resize factor for an estimated diameter: to the training size, unless the image's own size is as good.

    The image keeps its size (1.0) when the estimate is within
    :attr:`SizeOptions.keep_always` of the training diameter, or within
    :attr:`SizeOptions.keep_within` of it and the network
    was at least as confident at the image's own size (``own_confidence``)
    as at the winning rungs (``best_confidence``); without the two
    confidences, the first condition alone decides. The model was trained on
    nuclei of a range of sizes at their own size: natively large nuclei
    (sharp texture at 60x) are segmented best as they are, while an image
    enlarged by interpolation, its objects as large but blurred, is best
    brought back, and the confidences tell the two apart. Beyond the band,
    the factor brings the estimate to the training diameter, or with
    :attr:`SizeOptions.enlarge_to_edge` (the default) an image of smaller
    objects only to the band's lower edge (:attr:`SizeOptions.shrink_to_edge`:
    an image of larger objects to its upper edge).

    Examples
    --------
    >>> scale_for_estimate(84.0, 21.0)
    0.25
    >>> round(scale_for_estimate(10.5, 21.0), 3), scale_for_estimate(10.5, 21.0, SizeOptions(enlarge_to_edge=False))
    (1.538, 2.0)
    >>> wide = SizeOptions(keep_within=3.0)
    >>> scale_for_estimate(42.0, 21.0, wide, own_confidence=0.95, best_confidence=0.93)
    1.0
    >>> scale_for_estimate(42.0, 21.0, wide, own_confidence=0.85, best_confidence=0.93)
    0.5
    >>> scale_for_estimate(23.0, 21.0, own_confidence=0.85, best_confidence=0.93)
    1.0
    """
    factor = trained_diameter / diameter
    if 1.0 / options.keep_always <= factor <= options.keep_always:
        return 1.0
    within = 1.0 / options.keep_within <= factor <= options.keep_within
    if within and (own_confidence is None or best_confidence is None or own_confidence >= best_confidence):
        return 1.0
    if factor > 1.0 and options.enlarge_to_edge:
        factor /= options.keep_always
    elif factor < 1.0 and options.shrink_to_edge:
        factor *= options.keep_always
    return float(min(options.max_scale, max(options.min_scale, factor)))


def _measure(scales, results, target: str) -> list[tuple[float, int, float, float]]:
    steps = []
    for scale, (maps, labels) in zip(scales, results):
        diameter, count = median_diameter(labels)
        steps.append((scale, count, diameter, map_confidence(maps, target) if count else 0.0))
    return steps


def _shrink_or_resize(window: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """``window`` at ``scale``: block means for 1/2, 1/4, ... (ten times faster than a filtered resize of a
    large image, and as free of aliasing), else :func:`resize_channels`."""
    factor = 1.0 / scale
    step = int(round(factor))
    if scale < 1.0 and abs(factor - step) < 1e-9:
        height, width = (n // step * step for n in window.shape[1:])
        if height >= step and width >= step:
            blocks = window[:, :height, :width].reshape(window.shape[0], height // step, step, width // step, step)
            return np.ascontiguousarray(blocks.mean(axis=(2, 4), dtype=np.float32))
    return np.ascontiguousarray(resize_channels(window, size), dtype=np.float32)


def resize_channels(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (C, H, W) float32 array to (C, *shape), anti-aliased when shrinking.

    Returns ``data`` itself when it already has that size.

    Examples
    --------
    >>> resize_channels(np.ones((2, 4, 6), np.float32), (2, 3)).shape
    (2, 2, 3)
    """
    from skimage.transform import resize

    if tuple(data.shape[1:]) == tuple(shape):
        return data
    shrinking = shape[0] < data.shape[1] or shape[1] < data.shape[2]
    out = resize(data, (data.shape[0],) + tuple(shape), order=1, mode="reflect", anti_aliasing=shrinking,
                 preserve_range=True)
    return out.astype(np.float32, copy=False)


def min_size_at_scale(min_size: int, scale: float) -> int:
    """The smallest object, in the image's pixels, that is ``min_size`` pixels at the network's scale.

    A model's tuned ``min_size`` counts pixels of objects at its training
    size; labels come back at the image's own size, so an image shrunk by
    ``scale`` before the network needs ``min_size / scale**2``.

    Examples
    --------
    >>> min_size_at_scale(30, 0.25), min_size_at_scale(30, 2.0), min_size_at_scale(30, 1.0)
    (480, 8, 30)
    """
    if scale == 1.0:
        return int(min_size)
    return max(1, int(round(min_size / (scale * scale))))


def estimate_for_model(normalized: np.ndarray, model, *, objects: dict, trained_diameter: float,
                       options: SizeOptions = SizeOptions()) -> SizeEstimate:
    """:func:`estimate_size` with a loaded model's network and post-processing (``objects``: resolved options).

    The windows of all rungs up to the image's own size go through the
    network as one batch (a 512² pass alone runs two to five times slower
    per pixel than a large image on a CPU), padded to a common size;
    their maps, cropped back, go through
    :func:`segtool.infer.instances.maps_to_labels`.
    """
    from segtool.infer.network import make_predictor, prepared_net
    from segtool.infer.instances import maps_to_labels

    target = model.config.target
    if model.config.input == "hematoxylin" and options.whole_over_parts:
        # Stained tissue (nuclei-he reads the hematoxylin channel): a coarse rung finds tissue whole, with nuclei
        # inside it covering well under half of it, which is not a nucleus and its chromocentres. On the histology
        # test split enlarged 0.5x the rule shrank one image 4x and lost all its nuclei.
        options = replace(options, whole_over_parts=False)
    predictor = make_predictor(prepared_net(model), target)
    multiple = int(model.config.size_multiple)

    def segment(windows: list[np.ndarray]):
        if not windows:
            return []
        # one batch: each window padded (reflected) to a common size on the network's grid, then cropped back
        height = multiple * math.ceil(max(w.shape[1] for w in windows) / multiple)
        width = multiple * math.ceil(max(w.shape[2] for w in windows) / multiple)
        batch = np.stack([np.pad(w, ((0, 0), (0, height - w.shape[1]), (0, width - w.shape[2])), mode="symmetric")
                          for w in windows])
        maps = predictor(batch)
        out = []
        for window, m in zip(windows, maps):
            m = np.ascontiguousarray(m[:, : window.shape[1], : window.shape[2]])
            out.append((m, maps_to_labels(m, target=target, **objects)))
        return out

    return estimate_size(normalized, segment, target=target, trained_diameter=trained_diameter, options=options)
