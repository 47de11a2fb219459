"""Small pictures of a result: object outlines over the image (or over the labels), shrunk to a few kB.

Pure: arrays in, an RGB array or encoded bytes out. Outlines are found at
full resolution and then shrunk with a block maximum, so a small object
still leaves a visible mark in the thumbnail.
"""

from __future__ import annotations

import io
import math

import numpy as np

from segtool.errors import InputError
from segtool.overlay import color_labels, to_display_uint8

__all__ = ["thumbnail", "encode_jpeg"]


def _pad_to(data: np.ndarray, factor: int) -> np.ndarray:
    pad = [(0, (-n) % factor) for n in data.shape]
    return np.pad(data, pad, mode="edge") if any(p for _, p in pad) else data


def _block(data: np.ndarray, factor: int, how: str) -> np.ndarray:
    """Shrink a 2-D array by ``factor`` with the block's mean or max."""
    if factor == 1:
        return data
    padded = _pad_to(data, factor)
    # strided slices, rows then columns: 2 x factor whole-array operations, much faster than a
    # multi-axis reduction over a (h, factor, w, factor) view
    if how == "max":
        rows = padded[0::factor].copy()
        for i in range(1, factor):
            np.maximum(rows, padded[i::factor], out=rows)
        out = rows[:, 0::factor].copy()
        for j in range(1, factor):
            np.maximum(out, rows[:, j::factor], out=out)
        return out
    rows = padded[0::factor].astype(np.float32)
    for i in range(1, factor):
        rows += padded[i::factor]
    out = rows[:, 0::factor].copy()
    for j in range(1, factor):
        out += rows[:, j::factor]
    return out / np.float32(factor * factor)


#: Colours by label number (cycled): cheaper than ranking the labels of every thumbnail.
_PALETTE = color_labels(np.arange(64).reshape(1, -1))[0, 1:]


def _colours(ids: np.ndarray) -> np.ndarray:
    return _PALETTE[(ids.astype(np.int64) - 1) % len(_PALETTE)]


def _outline_ids(labels: np.ndarray) -> np.ndarray:
    """Each object's own label on its outline pixels (4-neighbour changes), 0 elsewhere."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:, :] != labels[:-1, :]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return np.where(edge, labels, 0)


def thumbnail(labels: np.ndarray, image: np.ndarray | None = None, *, size: int = 128) -> np.ndarray:
    """Object outlines drawn over ``image`` (or over the dimmed labels), at most ``size`` pixels a side.

    Parameters
    ----------
    labels : (M, N) ndarray of int
    image : (M, N) ndarray, optional
        Any real dtype; stretched between its 1st and 99.8th percentiles.
    size : int, optional
        Longest side of the result; images are shrunk by a whole factor, so
        a side may come out a little smaller.

    Returns
    -------
    rgb : (m, n, 3) ndarray of uint8

    Raises
    ------
    InputError
        If the arrays are not 2-D or differ in shape.

    Examples
    --------
    >>> labels = np.zeros((300, 200), np.uint16)
    >>> labels[100:140, 50:90] = 1
    >>> rgb = thumbnail(labels, np.ones((300, 200)), size=100)
    >>> rgb.shape, rgb.dtype.name, int((rgb.max(axis=2) > 0).sum()) > 0
    ((100, 67, 3), 'uint8', True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or (image is not None and np.shape(image) != labels.shape):
        raise InputError(f"thumbnail needs 2-D labels and an image of the same shape, got {labels.shape} "
                         f"and {None if image is None else np.shape(image)}")
    factor = max(1, math.ceil(max(labels.shape) / size))
    ids = _block(_outline_ids(labels), factor, "max")
    if image is not None:
        grey = to_display_uint8(_block(np.asarray(image, dtype=np.float32), factor, "mean"))
        rgb = np.repeat(grey[..., None], 3, axis=2)
    else:
        # no image: the objects themselves, dimmed, so the outlines stand out
        small = labels[::factor, ::factor]
        rgb = np.zeros(small.shape + (3,), np.uint8)
        inside = small > 0
        rgb[inside] = (_colours(small[inside]) * 0.45).astype(np.uint8)
    edge = ids > 0
    if edge.any():
        rgb[edge] = _colours(ids[edge])
    return rgb


def encode_jpeg(rgb: np.ndarray, *, quality: int = 80) -> bytes:
    """JPEG bytes of an RGB uint8 picture (a 128 x 128 thumbnail is a few kB).

    Examples
    --------
    >>> data = encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    >>> data[:2] == b"\\xff\\xd8"
    True
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality,
                                                                     optimize=True)
    return buffer.getvalue()
