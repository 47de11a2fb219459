"""Pictures a person can look at: labels in colour, outlines over the image."""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError

__all__ = ["to_display_uint8", "color_labels", "outline_overlay"]


def to_display_uint8(image: np.ndarray, *, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Stretch ``image`` between two percentiles to uint8 for display.

    Examples
    --------
    >>> to_display_uint8(np.array([[0, 50, 100]]), low=0, high=100).tolist()
    [[0, 128, 255]]
    """
    data = np.asarray(image, dtype=np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    scaled = (np.nan_to_num(data, nan=lo) - lo) / max(float(hi - lo), 1e-12)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _palette(n: int) -> np.ndarray:
    """``n + 1`` RGB colours: black for 0, then bright, well-separated hues."""
    # Golden-ratio hue steps keep neighbouring label numbers far apart in colour.
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((np.arange(n) * 7) % 3) / 2
    val = 0.75 + 0.25 * ((np.arange(n) * 5) % 2)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = np.select(
        [i[:, None] == k for k in range(6)],
        [np.stack(c, 1) for c in ((val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q))],
    )
    colours = np.zeros((n + 1, 3), np.uint8)
    colours[1:] = np.clip(np.rint(table * 255), 0, 255).astype(np.uint8)
    return colours


def color_labels(labels: np.ndarray) -> np.ndarray:
    """Render a label image as RGB, each object in its own colour, background black.

    Examples
    --------
    >>> rgb = color_labels(np.array([[0, 1], [2, 2]]))
    >>> rgb.shape, rgb[0, 0].tolist(), bool((rgb[0, 1] != rgb[1, 0]).any())
    ((2, 2, 3), [0, 0, 0], True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"labels must be 2-D, got shape {labels.shape}")
    ids, inverse = np.unique(labels, return_inverse=True)
    colours = _palette(len(ids))
    # Background keeps black even if 0 is absent from the image.
    index = np.arange(len(ids)) + (0 if ids[0] == 0 else 1)
    return colours[index[inverse.reshape(labels.shape)]]


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object whose 4-neighbour has another label (inner outlines)."""
    edge = np.zeros(labels.shape, bool)
    diff_y = labels[1:, :] != labels[:-1, :]
    diff_x = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge & (labels > 0)


def outline_overlay(image: np.ndarray, labels: np.ndarray, *, color: tuple[int, int, int] | None = None) -> np.ndarray:
    """Draw object outlines over a grayscale or colour image.

    Parameters
    ----------
    image : (M, N) or (3, M, N) ndarray
        Any real dtype; stretched to 1-99.8 percentiles for display. A
        (3, M, N) image (red, green, blue planes, as a colour model reads
        them) is shown in colour, all three planes stretched together so
        that the stain's hue stays.
    labels : (M, N) ndarray of int
        Objects to outline.
    color : tuple of 3 int, optional
        One colour for every outline; by default each object's own colour.

    Returns
    -------
    (M, N, 3) ndarray of uint8
    """
    labels = np.asarray(labels)
    colour = np.ndim(image) == 3 and np.shape(image)[0] == 3
    if np.shape(image)[-2:] != labels.shape or (np.ndim(image) != 2 and not colour):
        raise InputError(f"image shape {np.shape(image)} differs from labels shape {labels.shape}")
    if colour:
        rgb = np.ascontiguousarray(np.moveaxis(to_display_uint8(image), 0, -1))
    else:
        rgb = np.repeat(to_display_uint8(image)[..., None], 3, axis=2)
    edge = _boundaries(labels)
    if color is None:
        rgb[edge] = color_labels(labels)[edge]
    else:
        rgb[edge] = color
    return rgb
