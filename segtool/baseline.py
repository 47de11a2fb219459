"""Classical segmentation: polynomial background, global threshold, labels.

The background is fitted by :func:`segtool.background.fit_background` (a
robust least-squares Legendre polynomial of pixel position; the fit and its
public names are re-exported here). The corrected image (image minus
background) is then thresholded globally and labelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segtool.background import (
    POLARITIES,
    BackgroundFit,
    check_degree,
    check_image,
    finite_range,
    fit_grid,
    fit_steps,
    fitting_grid,
    grid_residuals,
)
from segtool.checks import check_choice, check_count, check_positive, check_sigma, check_threshold
from segtool.contrast import MIN_CONTRAST, object_contrast
from segtool.errors import InputError
from segtool.labels import label_dtype
from segtool.legendre import correct_rows, evaluate_at
from segtool.objectsize import estimate_diameter, size_defaults

__all__ = [
    "contrast_hint",
    "BaselineResult",
    "empty_image_reason",
    "segment_baseline",
    "MIN_SIZE",
    "OBJECT_STRUCTURE",
    "THRESHOLD_PIXELS",
    "apply_method",
    "fit_polarity",
    "grid_threshold",
    "is_flat",
    "threshold_grid",
]


# Automatic thresholds are computed from at most this many pixels (a regular
# subsample of larger images): a 256-bin histogram of 2**18 pixels already fixes
# the threshold to well within one bin (train-split F1 0.7211 vs 0.7209 with
# 2**20, at a quarter of the cost).
THRESHOLD_PIXELS = 1 << 18
# Objects are 8-connected (touching corners belong together, as in
# skimage.measure.label); background regions, and therefore holes, are 4-connected.
OBJECT_STRUCTURE = np.ones((3, 3), dtype=bool)
# Watershed split: distance-transform maxima must stand this many pixels above
# the saddle to their neighbour to seed their own object (h-maxima), so an
# irregular outline does not cut one nucleus into pieces.
_SPLIT_H = 1.0
# Default smallest object kept, in pixels (measured on the train split, see the
# segment_baseline Notes).
MIN_SIZE = 20



@dataclass(frozen=True, eq=False)
class BaselineResult:
    """Output of :func:`segment_baseline`.

    Attributes
    ----------
    labels : (H, W) ndarray of uint16 or uint32
        Objects ``1..N`` (consecutive), 0 = background; uint32 only when
        there are more than 65535 objects.
    background : (H, W) ndarray of float32
        Fitted background.
    corrected : (H, W) ndarray of float32
        Image minus background (not smoothed, even when ``smooth > 0``).
    threshold : float or None
        Threshold used, in corrected-image units. Objects are the pixels above
        it (``polarity="bright"``) or below it (``"dark"``). None when the
        corrected image is flat (nothing to threshold).
    polarity : str
        ``"bright"`` or ``"dark"`` (``"auto"`` resolved).
    fit : BackgroundFit
        The background fit.
    empty_reason : str or None
        Why the image was found empty by rule (constant, only smooth
        background, or no contrast above the noise), with ``labels`` all 0;
        None when the threshold was applied.
    diameter : float or None
        The object diameter the size-dependent defaults followed (given, or
        estimated with ``diameter="auto"``); None when they were not scaled.
    min_size : int or None
        The smallest object kept, in pixels (None for an empty result).
    """

    labels: np.ndarray
    background: np.ndarray
    corrected: np.ndarray
    threshold: float | None
    polarity: str
    fit: BackgroundFit
    empty_reason: str | None = None
    diameter: float | None = None
    min_size: int | None = None



def segment_baseline(
    image: np.ndarray,
    *,
    degree: int = 2,
    robust: bool = True,
    polarity: str = "bright",
    threshold: str | float = "otsu",
    min_size: int | None = None,
    fill_holes: bool = False,
    smooth: float = 0.0,
    split: bool = False,
    diameter: float | str | None = None,
) -> BaselineResult:
    """Segment objects by background subtraction, a global threshold and labelling.

    Parameters
    ----------
    image : (H, W) array_like
        Grayscale image of any real dtype.
    degree : int, optional
        Degree of the background polynomial (see :func:`segtool.background.fit_background`).
    robust : bool, optional
        Fit the background without the objects (see :func:`segtool.background.fit_background`).
    polarity : {"bright", "dark", "auto"}, optional
        Objects brighter (fluorescence) or darker than the background.
        ``"auto"`` fits with outliers on both sides left out, then picks
        ``"bright"`` when the corrected image's skewness is >= 0 (a few bright
        objects on a large background make a long upper tail) and ``"dark"``
        otherwise, and refits for that side.
    threshold : {"otsu", "li", "triangle", "yen"} or float, optional
        Method of ``skimage.filters`` applied to the corrected image (to its
        negative for dark objects), or a fixed threshold in corrected-image
        units (image minus background).
    min_size : int, optional
        Objects with fewer pixels are removed (after ``split``). Default
        :data:`MIN_SIZE`, scaled with ``diameter`` (see
        :func:`segtool.objectsize.size_defaults`).
    fill_holes : bool, optional
        Fill holes inside objects: background regions not connected to the
        image border and surrounded by a single object become part of it.
        A hole holding another object stays open, and so (with ``split``)
        does a gap enclosed by several touching objects.
    smooth : float, optional
        Sigma in pixels of a Gaussian filter applied to the corrected image
        before thresholding (0 = off). ``threshold`` then refers to the
        smoothed values.
    split : bool, optional
        Separate touching objects with a watershed of the distance transform
        (holes inside an object ignored), seeded at its h-maxima (h = 1 px):
        each distance peak at least 1 px above the saddle to a higher peak
        seeds an object (h scaled with ``diameter``).
    diameter : float, "auto" or None, optional
        Typical object diameter in pixels, which the size-dependent defaults
        (``min_size``, the split depth h) follow from nuclei of
        :data:`segtool.objectsize.REFERENCE_DIAMETER` pixels; ``"auto"``
        estimates it from the thresholded foreground
        (:func:`segtool.objectsize.estimate_diameter`); None keeps the
        defaults as they are.

    Returns
    -------
    result : BaselineResult
        Labels, background, corrected image, threshold, resolved polarity and
        the fit.

    Raises
    ------
    InputError
        For the cases listed under :func:`segtool.background.fit_background` (NaN or infinite
        pixels included), an unknown ``threshold`` or a negative
        ``min_size`` or ``smooth``.

    Notes
    -----
    An image without objects is a valid input with an all-zero result (and
    ``empty_reason`` saying why): a constant image; one that is only smooth
    background (flat after subtraction, to float rounding); and, for the
    automatic thresholds, one where the two classes the threshold makes differ
    by less than :data:`segtool.contrast.MIN_CONTRAST` (3) noise sigmas
    (:func:`segtool.contrast.object_contrast`; noise from neighbouring-pixel
    differences of the thresholded image): pure noise is split at 1.6 to 2.9
    sigma, real nuclei images at 13 or more. A numeric ``threshold`` is
    applied as given.

    Objects are 8-connected. For images over 2**18 pixels (512 x 512) the
    automatic threshold is computed from a regular subsample of about 2**18
    pixels (every s-th row and column) of the (smoothed) corrected image.

    Defaults were chosen on the train split of the project's fluorescence
    nuclei set (372 images; smallest annotated nucleus 21 px), by object F1
    at IoU 0.5: ``min_size`` 0 / 5 / 10 / 15 / 20 / 30 / 50 gave 0.587 /
    0.700 / 0.714 / 0.718 / 0.721 / 0.721 / 0.715 (with ``split``: 0.745 at
    20, 0.748 at 30); 20 is within 0.001 of the best and below the smallest
    nucleus. ``smooth`` 0.5 / 1 / 2 lowered F1 to 0.717 / 0.704 / 0.671.
    ``split`` raises F1 (0.721 to 0.745: recall up, precision down) but takes
    ~6x longer, so it is off by default.

    Examples
    --------
    >>> image = np.zeros((8, 8), dtype=np.uint8)
    >>> image[1:4, 1:4] = 200
    >>> image[5:7, 4:8] = 150
    >>> result = segment_baseline(image, degree=0, min_size=1)
    >>> result.labels.max(), result.labels.dtype.name, result.polarity
    (np.uint16(2), 'uint16', 'bright')
    """
    # The full scan for NaN/Inf and a constant image is done inside the
    # background pass below (one read of the image instead of three).
    data = check_image(image, scan=False)
    degree = check_degree(degree)
    polarity = check_choice(polarity, POLARITIES, "polarity")
    method = check_threshold(threshold)
    if min_size is not None:
        min_size = check_count(min_size, "min_size")
    if diameter is not None and diameter != "auto":
        diameter = check_positive(diameter, "diameter")
    smooth = check_sigma(smooth)

    grid = fitting_grid(data, fit_steps(*data.shape))
    fit, polarity = fit_polarity(grid, data.shape, degree, robust=bool(robust), polarity=polarity)

    # When the threshold is known before the image is corrected (a number, or a
    # method applied to a subsample of a large image), the comparison is done in
    # the same pass as the subtraction.
    level: float | None = None
    if smooth == 0:
        if not isinstance(method, str):
            level = method
        elif data.size > THRESHOLD_PIXELS:
            level = grid_threshold(threshold_grid(data), fit, method, polarity)
    foreground = None if level is None else np.empty(data.shape, dtype=bool)
    background = np.empty(data.shape, dtype=np.float32)
    corrected = np.empty(data.shape, dtype=np.float32)
    lo, hi = correct_rows(
        fit.coefficients, data, background, corrected, level=level, polarity=polarity, foreground=foreground
    )
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("image contains NaN or infinite values")
    if lo == hi:
        return _empty_result(background, corrected, None, polarity, fit, "image is constant")
    values = ndi.gaussian_filter(corrected, smooth, mode="nearest") if smooth > 0 else corrected
    if foreground is None:
        level = _threshold_level(values, method, polarity, scale=max(abs(lo), abs(hi)))
        if level is None:
            return _empty_result(background, corrected, None, polarity, fit, "image is only smooth background")
        foreground = values > level if polarity == "bright" else values < level
    if isinstance(method, str):
        contrast = object_contrast(values, level, polarity=polarity)
        if contrast < MIN_CONTRAST:
            reason = f"no object stands out from the noise (contrast {contrast:.2g} < {MIN_CONTRAST:g} noise sigmas)"
            return _empty_result(background, corrected, level, polarity, fit, reason)

    if diameter == "auto":
        diameter = estimate_diameter(foreground)
    smallest, split_height = size_defaults(diameter, min_size=MIN_SIZE, split_height=_SPLIT_H)
    min_size = smallest if min_size is None else min_size
    labels = _label_objects(foreground, min_size=min_size, fill_holes=fill_holes,
                            split_height=split_height if split else None)
    return BaselineResult(
        labels=labels,
        background=background,
        corrected=corrected,
        threshold=float(level),
        polarity=polarity,
        fit=fit,
        diameter=diameter,
        min_size=min_size,
    )



def _label_objects(foreground: np.ndarray, *, min_size: int, fill_holes: bool,
                   split_height: float | None) -> np.ndarray:
    """Objects of a foreground mask: 8-connected pieces, holes filled (``fill_holes``), touching objects split
    (``split_height`` not None), those under ``min_size`` pixels removed. Fills ``foreground``'s holes in place."""
    split = split_height is not None
    labels, count = ndi.label(foreground, structure=OBJECT_STRUCTURE)
    if (fill_holes or split) and count:
        holes = _owned_holes(foreground, labels)
        if split:
            # Holes (e.g. dark nucleoli) would put extra maxima in the distance
            # transform and cut a nucleus in two: measure distances without them.
            labels = _split_touching(foreground, labels, solid=foreground | (holes > 0), height=split_height)
            if fill_holes:
                # A gap enclosed by a ring of touching nuclei has several owners now.
                holes = _owned_holes(foreground, labels)
        if fill_holes:
            filled = holes > 0
            labels[filled] = holes[filled]
            foreground |= filled
    return _remove_small(labels, foreground, min_size)


def contrast_hint(labels: np.ndarray, polarity: str) -> str | None:
    """A one-line hint when the labels look like the background was taken for an object.

    Stained tissue or brightfield (dark nuclei on a bright background) read
    with ``polarity="bright"`` gives one "object" covering most of the image.
    When one object covers over half of it, the hint names the ways out.

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) ndarray of int
    polarity : str
        The polarity used (``"bright"`` or ``"dark"``).

    Returns
    -------
    hint : str or None

    Examples
    --------
    >>> labels = np.ones((4, 4), np.uint16); labels[0] = 0
    >>> contrast_hint(labels, "bright").split(";")[0]
    'one object covers 75 % of the image'
    >>> contrast_hint(np.eye(4, dtype=np.uint16), "bright") is None
    True
    """
    if labels.size == 0 or not labels.any():
        return None
    largest = int(np.bincount(labels.ravel())[1:].max())
    if largest * 2 <= labels.size:
        return None
    share = round(100 * largest / labels.size)
    other = "dark" if polarity == "bright" else "bright"
    tissue = " (stained tissue, brightfield)" if polarity == "bright" else ""
    return (f"one object covers {share} % of the image; if the objects are {other} on a {polarity} background{tissue}, "
            "try --polarity auto, or for H&E `segtool predict -m nuclei-he`")


def empty_image_reason(image: np.ndarray, *, degree: int = 2) -> str | None:
    """Why ``image`` holds no object by the empty-image rule of :func:`segment_baseline`, or None.

    The image is corrected with a robust degree-``degree`` background and
    thresholded with Otsu; it is empty when it is constant, only smooth
    background, or its two classes differ by less than
    :data:`segtool.contrast.MIN_CONTRAST` noise sigmas. The class gap does not
    depend on polarity, so this holds for bright and dark objects alike.
    ``segtool predict`` uses it so that an empty well with uneven
    illumination, which percentile normalisation would stretch into a bright
    blob, gives 0 objects.

    Examples
    --------
    >>> empty_image_reason(np.full((16, 16), 3.0))
    'image is constant'
    >>> image = np.zeros((16, 16))
    >>> image[4:9, 4:9] = 100.0
    >>> empty_image_reason(image) is None
    True
    """
    return segment_baseline(image, degree=degree, min_size=0).empty_reason


def _empty_result(
    background: np.ndarray, corrected: np.ndarray, level: float | None, polarity: str, fit: BackgroundFit, reason: str
) -> BaselineResult:
    """The result for an image without objects: all-zero labels, the background and fit kept."""
    return BaselineResult(
        labels=np.zeros(corrected.shape, dtype=np.uint16),
        background=background,
        corrected=corrected,
        threshold=None if level is None else float(level),
        polarity=polarity,
        fit=fit,
        empty_reason=reason,
    )


def fit_polarity(
    grid: Any, shape: tuple[int, int], degree: int, *, robust: bool, polarity: str
) -> tuple[BackgroundFit, str]:
    """Background fit from the fitting grid of an image of ``shape``, and the polarity ("auto" resolved)."""
    if polarity == "auto":
        # Fit with both tails left out, then read the polarity off the skewness of
        # the residuals on the fitting grid, and refit for that side.
        fit = fit_grid(grid, shape, degree, robust=robust, allowed=None, side="auto")
        polarity = "bright" if _skewness(grid_residuals(grid, fit)) >= 0 else "dark"
        if robust:
            fit = fit_grid(grid, shape, degree, robust=True, allowed=None, side=polarity)
        return fit, polarity
    return fit_grid(grid, shape, degree, robust=robust, allowed=None, side=polarity), polarity


# --------------------------------------------------------------------- threshold


def threshold_grid(values: Any) -> Any:
    """Regular subsample (every s-th row and column) of about THRESHOLD_PIXELS pixels."""
    s = math.ceil(math.sqrt(values.size / THRESHOLD_PIXELS))
    return values[s // 2 :: s, s // 2 :: s]


def grid_threshold(raw: np.ndarray, fit: BackgroundFit, method: str, polarity: str) -> float | None:
    """Automatic threshold from a regular subsample of a large corrected image.

    ``raw`` is ``threshold_grid(image)`` of the image ``fit`` was fitted to.
    The subsample is corrected with the same float32 arithmetic as the full
    image, so it holds the values the full image will have there. Returns None
    when the subsample is flat (it may miss a few small objects), so the caller
    falls back to the full image.
    """
    height, width = fit.shape
    s = math.ceil(math.sqrt(height * width / THRESHOLD_PIXELS))
    rows, cols = np.arange(s // 2, height, s), np.arange(s // 2, width, s)
    raw = np.asarray(raw)
    sample = np.empty(raw.shape, dtype=np.float32)
    evaluate_at(fit.coefficients, (height, width), rows, cols, sample)
    np.subtract(raw, sample, out=sample, dtype=np.float32, casting="unsafe")
    lo, hi = finite_range(raw)
    if is_flat(sample, max(abs(lo), abs(hi))):
        return None
    return apply_method(sample, method, polarity)


def _threshold_level(values: np.ndarray, method: str | float, polarity: str, *, scale: float) -> float | None:
    """Threshold in ``values`` units; objects are above it (bright) or below it (dark).

    None when ``values`` are flat (only float rounding is left after the
    background was subtracted): there is nothing to threshold.
    """
    if not isinstance(method, str):
        return float(method)
    sample = values
    if values.size > THRESHOLD_PIXELS:
        sample = threshold_grid(values)
        if is_flat(sample, scale):
            sample = values  # the subsample may miss a few small objects
    if is_flat(sample, scale):
        return None
    return apply_method(sample, method, polarity)


def is_flat(values: np.ndarray, scale: float) -> bool:
    """Whether ``values`` span at most ``1e-5 * scale`` (no objects).

    Parameters
    ----------
    values : ndarray
        Corrected intensities.
    scale : float
        Intensity scale of the image.

    Returns
    -------
    flat : bool
    """
    # float32 evaluation of the background leaves errors of ~1e-7 of the image
    # scale; a range within 1e-5 of it holds no objects.
    return float(values.max()) - float(values.min()) <= 1e-5 * scale


def apply_method(sample: np.ndarray, method: str, polarity: str) -> float:
    """Automatic threshold of ``sample`` by a ``skimage.filters`` method.

    Parameters
    ----------
    sample : ndarray
        Corrected intensities (a subsample of the image).
    method : str
        One of :data:`segtool.thresholds.THRESHOLD_METHODS`.
    polarity : str
        "bright" or "dark" objects.

    Returns
    -------
    threshold : float
    """
    from skimage import filters

    func = {
        "otsu": filters.threshold_otsu,
        "li": filters.threshold_li,
        "triangle": filters.threshold_triangle,
        "yen": filters.threshold_yen,
    }[method]
    # The methods look for bright objects; for dark ones, threshold the negative.
    if polarity == "bright":
        return float(func(np.ascontiguousarray(sample)))
    return -float(func(np.negative(sample)))


def _skewness(values: np.ndarray) -> float:
    d = values - values.mean()
    m2 = float(np.mean(d * d))
    return float(np.mean(d * d * d)) / m2**1.5 if m2 > 0 else 0.0


# ------------------------------------------------------------------------ labels


def _owned_holes(foreground: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Holes surrounded by a single object, each marked with that object's label.

    A hole is a 4-connected background region that does not touch the image
    border. Gaps enclosed by several touching objects are not holes of any one
    of them and stay 0.
    """
    background_ids, n_regions = ndi.label(~foreground)  # 4-connected
    is_hole = np.ones(n_regions + 1, dtype=bool)
    is_hole[0] = False
    for edge in (background_ids[0], background_ids[-1], background_ids[:, 0], background_ids[:, -1]):
        is_hole[edge] = False
    owner_of = np.zeros(n_regions + 1, dtype=labels.dtype)
    hole_index = np.flatnonzero(is_hole)
    if hole_index.size:
        hole_ids = np.where(is_hole[background_ids], background_ids, 0)
        # Spread each hole's id one pixel into its rim: a 4-neighbour of a hole
        # pixel is either in the hole or an object pixel.
        rim_ids = ndi.grey_dilation(hole_ids, footprint=ndi.generate_binary_structure(2, 1))
        rim = foreground & (rim_ids > 0)
        ids, owners = rim_ids[rim], labels[rim]
        lowest = np.full(n_regions + 1, np.iinfo(np.int64).max, dtype=np.int64)
        highest = np.zeros(n_regions + 1, dtype=np.int64)
        np.minimum.at(lowest, ids, owners)
        np.maximum.at(highest, ids, owners)
        single = is_hole & (lowest == highest)
        owner_of[single] = highest[single]
    return owner_of[background_ids]


def _split_touching(foreground: np.ndarray, labels: np.ndarray, *, solid: np.ndarray, height: float = _SPLIT_H) -> np.ndarray:
    """Watershed of the distance transform of ``solid``, seeded at its h-maxima (h = ``height``), within ``foreground``."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    distance = ndi.distance_transform_edt(solid).astype(np.float32)
    peaks = h_maxima(distance, height).astype(bool)
    peaks &= foreground
    markers, n_markers = ndi.label(peaks, structure=OBJECT_STRUCTURE)
    split = watershed(-distance, markers, mask=foreground)
    # Objects lower than h have no marker; they keep their own label.
    orphans = foreground & (split == 0)
    if orphans.any():
        split[orphans] = labels[orphans].astype(split.dtype) + n_markers
    return split


def _remove_small(labels: np.ndarray, foreground: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels; renumber 1..N as uint16 (uint32 above 65535)."""
    values = labels[foreground]
    sizes = np.bincount(values)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    n = int(keep.sum())
    dtype = label_dtype(n)
    lut = np.cumsum(keep).astype(dtype)
    lut[~keep] = 0
    out = np.zeros(labels.shape, dtype=dtype)
    # Only object pixels need a lookup; background stays 0.
    out[foreground] = lut[values]
    return out
