"""Link 2-D objects of consecutive planes into 3-D objects by their overlap (IoU).

The idea of Cellpose's ``stitch_threshold``: an object in plane z takes the
label of the object of plane z - 1 it overlaps best, if their IoU reaches the
threshold, and a new label otherwise. Here the matching is one-to-one
(highest IoU first), so a nucleus that looks split in one plane does not pull
two objects into one. Works plane by plane, so a stack of any depth is
stitched with two planes in memory.
"""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError
from segtool.labels import label_dtype
from segtool.metrics import iou_pairs

__all__ = ["STITCH_THRESHOLD", "PlaneStitcher", "stitch_planes"]

#: Smallest IoU with which an object continues one of the previous plane, when none is given (the default of
#: ``--stitch-threshold``, :class:`segtool.volume.predict.StackPredictOptions` and the predict task).
STITCH_THRESHOLD = 0.25


class PlaneStitcher:
    """Stitch planes one at a time: ``stitched = stitcher.add(labels_2d)``.

    Parameters
    ----------
    threshold : float
        Smallest IoU, in (0, 1], with which an object continues one of the
        previous plane.

    Attributes
    ----------
    n_labels : int
        3-D labels handed out so far (they are 1..n_labels, consecutive).

    Examples
    --------
    >>> s = PlaneStitcher(0.5)
    >>> s.add(np.array([[1, 1, 0, 2]])).tolist(), s.add(np.array([[0, 5, 5, 0]])).tolist()
    ([[1, 1, 0, 2]], [[0, 3, 3, 0]])
    """

    def __init__(self, threshold: float = STITCH_THRESHOLD) -> None:
        threshold = float(threshold)
        if not 0 < threshold <= 1:
            raise InputError(f"stitch threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.n_labels = 0
        self._previous: np.ndarray | None = None

    def add(self, labels: np.ndarray) -> np.ndarray:
        """Relabel one plane's 2-D ``labels`` (any numbering, 0 = background) with 3-D labels, uint32."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise InputError(f"a plane's labels must be 2-D, got shape {labels.shape}")
        present = np.unique(labels)
        present = present[present != 0]
        lut: dict[int, int] = {}
        if self._previous is not None and present.size:
            if self._previous.shape != labels.shape:
                raise InputError(f"plane shape {labels.shape} differs from the previous plane's {self._previous.shape}")
            pairs = iou_pairs(self._previous, labels)
            order = np.argsort(-pairs["iou"], kind="stable")
            taken_prev: set[int] = set()
            for k in order:
                if pairs["iou"][k] < self.threshold:
                    break
                prev = int(pairs["true_labels"][pairs["rows"][k]])
                new = int(pairs["pred_labels"][pairs["cols"][k]])
                if prev in taken_prev or new in lut:
                    continue
                taken_prev.add(prev)
                lut[new] = prev
        table_size = int(present.max()) + 1 if present.size else 1
        table = np.zeros(table_size, dtype=np.uint32)
        for value in present.tolist():
            if value not in lut:
                self.n_labels += 1
                lut[value] = self.n_labels
            table[value] = lut[value]
        out = table[labels]
        self._previous = out
        return out


def stitch_planes(labels: np.ndarray, *, threshold: float = STITCH_THRESHOLD) -> np.ndarray:
    """Stitch a stack of independent 2-D label planes into 3-D objects.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Each plane labelled on its own.
    threshold : float, optional
        Smallest IoU for an object to continue one of the plane above.

    Returns
    -------
    (Z, Y, X) ndarray of uint16, or uint32 above 65535 objects

    Examples
    --------
    >>> planes = np.array([[[1, 1, 0]], [[4, 4, 0]], [[0, 0, 2]]])
    >>> stitch_planes(planes, threshold=0.5)[:, 0].tolist()
    [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"label stack must be 3-D (Z, Y, X), got shape {labels.shape}")
    stitcher = PlaneStitcher(threshold)
    out = np.stack([stitcher.add(plane) for plane in labels]) if labels.shape[0] else labels.astype(np.uint32)
    return out.astype(label_dtype(stitcher.n_labels), copy=False)
