"""Whether the objects one rung of the size ladder found are parts of the objects another rung found.

The size estimate (:mod:`segtool.infer.sizing`) shows an image to the network
at several scales. Bright spots inside nuclei (the chromocentres of mouse
nuclei) are objects of their own size to the network at the fine scales,
and it can be surer of them than of the nuclei it finds whole at the coarse
scales; these functions tell such parts from small nuclei that a coarse scale
merely blurs together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PARTS_COVER", "PARTS_INSIDE", "PARTS_SIZE_RATIO", "RungView", "are_parts_of", "part_shares"]


#: A coarser agreeing pair overrides a finer one only when its objects are at least this many times as wide.
PARTS_SIZE_RATIO = 2.0
#: Fine objects are parts of coarse ones when at least this share of their centres lies inside coarse objects ...
PARTS_INSIDE = 0.7
#: ... and they cover at most this share of the coarse objects' area (packed small nuclei, which a coarse rung
#: blurs into one blob, cover most of it; chromocentres or nucleoli a small part).
PARTS_COVER = 0.6


@dataclass(frozen=True)
class RungView:
    """What one rung of the ladder saw: its scale, its window in the image, and its labels (at the rung's scale)."""

    scale: float
    rows: slice
    cols: slice
    labels: np.ndarray

    def grid(self, position, axis: int) -> np.ndarray:
        """Image coordinates along ``axis`` (0 rows, 1 columns) -> indices on this rung's grid, clipped to it."""
        start = (self.rows, self.cols)[axis].start
        index = np.floor((np.asarray(position, dtype=np.float64) - start) * self.scale).astype(np.int64)
        return np.clip(index, 0, self.labels.shape[axis] - 1)

    def image(self, index, axis: int) -> np.ndarray:
        """Indices on this rung's grid along ``axis`` -> image coordinates of the pixels' centres."""
        return (np.asarray(index, dtype=np.float64) + 0.5) / self.scale + (self.rows, self.cols)[axis].start


def are_parts_of(fine: RungView, coarse: RungView, *, min_objects: int = 3) -> bool:
    """Whether the objects ``fine`` found are parts of the objects ``coarse`` found, where their windows overlap.

    Parts: at least :data:`PARTS_INSIDE` of the fine objects' centres fall
    inside coarse objects, and the fine objects cover at most
    :data:`PARTS_COVER` of the coarse objects' area. Bright spots inside
    nuclei pass; small nuclei packed into what a coarse rung sees as one blob
    cover most of it and do not.

    Examples
    --------
    >>> big = np.zeros((40, 40), np.int32); big[4:36, 4:36] = 1          # one nucleus, at scale 0.25
    >>> spots = np.zeros((160, 160), np.int32)                             # its chromocentres, at scale 1
    >>> for k, (y, x) in enumerate([(40, 40), (40, 100), (100, 60), (110, 110)], start=1):
    ...     spots[y - 4:y + 4, x - 4:x + 4] = k
    >>> whole = slice(0, 160)
    >>> are_parts_of(RungView(1.0, whole, whole, spots), RungView(0.25, whole, whole, big))
    True
    >>> packed = np.zeros((160, 160), np.int32)                            # small nuclei filling the blob
    >>> for k in range(16):
    ...     y, x = 32 + 32 * (k // 4), 32 + 32 * (k % 4)
    ...     packed[y - 14:y + 14, x - 14:x + 14] = k + 1
    >>> are_parts_of(RungView(1.0, whole, whole, packed), RungView(0.25, whole, whole, big))
    False
    """
    shares = part_shares(fine, coarse, min_objects=min_objects)
    return shares is not None and shares[0] >= PARTS_INSIDE and shares[1] <= PARTS_COVER


def part_shares(fine: RungView, coarse: RungView, *, min_objects: int = 3) -> tuple[float, float] | None:
    """(share of fine objects' centres inside coarse objects, share of the coarse objects' area fine objects cover).

    Over the overlap of the two windows (see :func:`are_parts_of`); None
    when they do not overlap, or it holds no coarse object or fewer than
    ``min_objects`` fine ones.

    Examples
    --------
    >>> coarse = np.zeros((10, 10), np.int32); coarse[2:8, 2:8] = 1
    >>> fine = np.zeros((20, 20), np.int32); fine[5:7, 5:7] = 1; fine[10:12, 10:12] = 2; fine[13:15, 5:7] = 3
    >>> whole = slice(0, 20)
    >>> [round(v, 2) for v in part_shares(RungView(1.0, whole, whole, fine), RungView(0.5, whole, whole, coarse))]
    [1.0, 0.08]
    """
    from scipy import ndimage as ndi

    top, bottom = max(fine.rows.start, coarse.rows.start), min(fine.rows.stop, coarse.rows.stop)
    left, right = max(fine.cols.start, coarse.cols.start), min(fine.cols.stop, coarse.cols.stop)
    if bottom <= top or right <= left or not fine.labels.any() or not coarse.labels.any():
        return None
    # fine objects' centres, in image pixels, those inside the overlap
    index = np.arange(1, int(fine.labels.max()) + 1)
    present = index[np.bincount(fine.labels.ravel(), minlength=index.size + 1)[1:] > 0]
    centres = np.asarray(ndi.center_of_mass(fine.labels > 0, fine.labels, present), dtype=np.float64).reshape(-1, 2)
    ys, xs = fine.image(centres[:, 0], 0), fine.image(centres[:, 1], 1)
    keep = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
    if int(keep.sum()) < min_objects:
        return None
    inside = coarse.labels[coarse.grid(ys[keep], 0), coarse.grid(xs[keep], 1)] > 0
    # the coarse objects' pixels in the overlap, looked up on the fine grid
    rows = np.arange(coarse.grid(top, 0), coarse.grid(bottom - 1, 0) + 1)
    cols = np.arange(coarse.grid(left, 1), coarse.grid(right - 1, 1) + 1)
    region = coarse.labels[np.ix_(rows, cols)] > 0
    if not region.any():
        return None
    on_fine = fine.labels[np.ix_(fine.grid(coarse.image(rows, 0), 0), fine.grid(coarse.image(cols, 1), 1))]
    covered = (on_fine > 0)[region]
    return float(inside.mean()), float(covered.mean())
