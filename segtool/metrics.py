"""Instance segmentation metrics: match predicted objects to ground truth by IoU.

Objects are matched one-to-one: a predicted object and a true object form a
pair when their intersection over union (IoU) reaches a threshold, and among
all valid pairings the one with the most pairs (then the highest summed IoU) is
taken. For thresholds above 0.5 that pairing is unique, because an object can
overlap more than half of at most one other object; at 0.5 and below an
optimal assignment (Hungarian algorithm) decides.

The IoU of every overlapping pair is read off the contingency table of the two
label images (pixels counted per (true, predicted) label pair), so the cost is
one pass over the pixels plus work proportional to the number of overlapping
pairs, never a mask per pair.

Counts, not ratios, are the result (:class:`MatchCounts`); they add up over
images, so dataset scores come from summed counts rather than a mean of
per-image ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.errors import InputError
from segtool.labels import check_labels

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchCounts",
    "iou_pairs",
    "match_labels",
    "pixel_scores",
]

#: IoU thresholds of the 2018 Data Science Bowl and StarDist papers: 0.5, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# Largest label for which a lookup table (one int per possible label) is used to
# renumber labels; sparser, larger labels go through np.unique instead.
_LUT_MAX_LABEL = 1 << 24


@dataclass(frozen=True, eq=False)
class MatchCounts:
    """Object matching counts for one image or summed over many, per IoU threshold.

    Add two ``MatchCounts`` (``a + b`` or ``sum(list)``) to get dataset totals;
    every score below is then computed from the summed counts.

    Attributes
    ----------
    thresholds : (T,) ndarray of float64
        IoU thresholds.
    tp, fp, fn : (T,) ndarray of int64
        Matched pairs, unmatched predictions and unmatched true objects.
    sum_matched_iou : (T,) ndarray of float64
        Sum of the IoU of the matched pairs.
    n_true, n_pred : int
        Number of true and predicted objects.

    Notes
    -----
    A ratio whose denominator is zero is 1.0 when both sides hold no objects
    (nothing to find and nothing found is a perfect result) and 0.0 otherwise.

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 2, 2]])
    >>> counts = match_labels(gt, gt, thresholds=(0.5,))
    >>> counts.tp, counts.fp, counts.fn
    (array([2]), array([0]), array([0]))
    >>> float((counts + counts).f1[0])
    1.0
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    sum_matched_iou: np.ndarray
    n_true: int
    n_pred: int

    def __post_init__(self) -> None:
        thresholds = np.array(self.thresholds, dtype=np.float64).reshape(-1)
        fields = {"thresholds": thresholds}
        for name in ("tp", "fp", "fn"):
            fields[name] = np.array(getattr(self, name), dtype=np.int64).reshape(-1)
        fields["sum_matched_iou"] = np.array(self.sum_matched_iou, dtype=np.float64).reshape(-1)
        for name, value in fields.items():
            if value.shape != thresholds.shape:
                raise ValueError(f"{name} has {value.size} values for {thresholds.size} thresholds")
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        object.__setattr__(self, "n_true", int(self.n_true))
        object.__setattr__(self, "n_pred", int(self.n_pred))

    def __add__(self, other: MatchCounts) -> MatchCounts:
        if not isinstance(other, MatchCounts):
            return NotImplemented
        if self.thresholds.shape != other.thresholds.shape or not np.allclose(self.thresholds, other.thresholds):
            raise ValueError(f"cannot add counts over different thresholds {self.thresholds} and {other.thresholds}")
        return MatchCounts(
            thresholds=self.thresholds,
            tp=self.tp + other.tp,
            fp=self.fp + other.fp,
            fn=self.fn + other.fn,
            sum_matched_iou=self.sum_matched_iou + other.sum_matched_iou,
            n_true=self.n_true + other.n_true,
            n_pred=self.n_pred + other.n_pred,
        )

    def __radd__(self, other: Any) -> MatchCounts:
        # Lets the built-in sum() start from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @property
    def _empty(self) -> bool:
        return self.n_true == 0 and self.n_pred == 0

    def _ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        numerator = np.asarray(numerator, dtype=np.float64)
        denominator = np.asarray(denominator, dtype=np.float64)
        fill = 1.0 if self._empty else 0.0
        out = np.full(numerator.shape, fill)
        np.divide(numerator, denominator, out=out, where=denominator > 0)
        return out

    @property
    def precision(self) -> np.ndarray:
        """TP / (TP + FP) per threshold."""
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        """TP / (TP + FN) per threshold."""
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> np.ndarray:
        """2 TP / (2 TP + FP + FN) per threshold."""
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def ap(self) -> np.ndarray:
        """TP / (TP + FP + FN) per threshold: the "AP" of the 2018 Data Science Bowl and StarDist."""
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def mean_matched_iou(self) -> np.ndarray:
        """Mean IoU of the matched pairs per threshold."""
        return self._ratio(self.sum_matched_iou, self.tp)

    @property
    def panoptic_quality(self) -> np.ndarray:
        """Sum of matched IoU / (TP + FP/2 + FN/2) per threshold (Kirillov et al. 2019)."""
        return self._ratio(self.sum_matched_iou, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    def to_rows(self) -> list[dict[str, float | int]]:
        """Return one JSON-safe dict per threshold with counts and scores.

        Examples
        --------
        >>> row = match_labels(np.ones((2, 2), int), np.ones((2, 2), int), thresholds=(0.5,)).to_rows()[0]
        >>> row["threshold"], row["tp"], row["ap"]
        (0.5, 1, 1.0)
        """
        columns = {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap": self.ap,
            "mean_matched_iou": self.mean_matched_iou,
            "panoptic_quality": self.panoptic_quality,
        }
        rows = []
        for k, threshold in enumerate(self.thresholds):
            row: dict[str, float | int] = {
                "threshold": round(float(threshold), 6),
                "n_true": self.n_true,
                "n_pred": self.n_pred,
                "tp": int(self.tp[k]),
                "fp": int(self.fp[k]),
                "fn": int(self.fn[k]),
            }
            row.update({name: float(values[k]) for name, values in columns.items()})
            rows.append(row)
        return rows


def _check_thresholds(thresholds) -> np.ndarray:
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise InputError("no IoU thresholds given")
    bad = values[~((values > 0) & (values <= 1))]
    if bad.size:
        raise InputError(f"IoU threshold {bad[0]:g} is outside (0, 1]")
    return values


def _renumber(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels to 1..n (0 stays background).

    Returns the original labels (sorted), their pixel counts, and the flat
    array of new indices.
    """
    top = int(flat.max()) if flat.size else 0
    if top <= _LUT_MAX_LABEL:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        labels = np.flatnonzero(counts[1:]) + 1
        table = np.zeros(top + 1, dtype=np.int32)
        table[labels] = np.arange(1, labels.size + 1, dtype=np.int32)
        return labels, counts[labels], table[flat]
    values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int32)
    if values[0] == 0:
        return values[1:], counts[1:], inverse
    return values, counts, inverse + 1


def iou_pairs(gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """IoU of every pair of overlapping objects, from the label contingency table.

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Label images (0 = background), any number of dimensions.

    Returns
    -------
    dict
        ``true_labels`` (n_true,) and ``pred_labels`` (n_pred,): labels present;
        ``true_areas``, ``pred_areas``: their pixel counts; ``rows``, ``cols``:
        indices into those for each overlapping pair; ``intersection`` and
        ``iou`` of each pair.

    Raises
    ------
    InputError
        If the shapes differ or a label image is not integer/non-negative.

    Examples
    --------
    >>> pairs = iou_pairs(np.array([[1, 1, 1, 1]]), np.array([[0, 5, 5, 0]]))
    >>> pairs["true_labels"], pairs["pred_labels"], pairs["iou"]
    (array([1]), array([5]), array([0.5]))
    """
    gt = check_labels(gt, role="ground truth")
    pred = check_labels(pred, role="predicted")
    if gt.shape != pred.shape:
        raise InputError(f"shape mismatch: ground truth {gt.shape} vs prediction {pred.shape}")
    true_labels, true_areas, t_index = _renumber(gt.reshape(-1))
    pred_labels, pred_areas, p_index = _renumber(pred.reshape(-1))
    both = (t_index > 0) & (p_index > 0)
    n_cols = pred_labels.size + 1
    key = t_index[both].astype(np.int64) * n_cols + p_index[both]
    n_bins = (true_labels.size + 1) * n_cols
    if n_bins <= max(1 << 22, 4 * key.size):
        table = np.bincount(key, minlength=n_bins)
        keys = np.flatnonzero(table)
        intersection = table[keys]
    else:
        keys, intersection = np.unique(key, return_counts=True)
    rows = keys // n_cols - 1
    cols = keys % n_cols - 1
    union = true_areas[rows] + pred_areas[cols] - intersection
    return {
        "true_labels": true_labels,
        "pred_labels": pred_labels,
        "true_areas": true_areas,
        "pred_areas": pred_areas,
        "rows": rows,
        "cols": cols,
        "intersection": intersection,
        "iou": intersection / union,
    }


def _match_pairs(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Choose a one-to-one subset of candidate pairs: most pairs first, then most summed IoU.

    ``rows``/``cols``/``iou`` are the candidate pairs (all valid). Returns a
    boolean mask over them. Pairs whose row and column appear in no other
    candidate are taken directly; the rest is solved per connected component
    of the bipartite candidate graph with ``linear_sum_assignment``.
    """
    chosen = np.zeros(rows.size, dtype=bool)
    if rows.size == 0:
        return chosen
    _, row_inv, row_deg = np.unique(rows, return_inverse=True, return_counts=True)
    _, col_inv, col_deg = np.unique(cols, return_inverse=True, return_counts=True)
    simple = (row_deg[row_inv] == 1) & (col_deg[col_inv] == 1)
    chosen[simple] = True
    rest = np.flatnonzero(~simple)
    if rest.size == 0:
        return chosen

    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    r_ids, r_local = np.unique(rows[rest], return_inverse=True)
    c_ids, c_local = np.unique(cols[rest], return_inverse=True)
    n_r = r_ids.size
    graph = coo_array(
        (np.ones(rest.size), (r_local, c_local + n_r)),
        shape=(n_r + c_ids.size, n_r + c_ids.size),
    )
    _, component = connected_components(graph, directed=False)
    edge_component = component[r_local]
    order = np.argsort(edge_component, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_component[order])) + 1
    for group in np.split(order, bounds):
        edges = rest[group]
        g_rows, g_r = np.unique(r_local[group], return_inverse=True)
        g_cols, g_c = np.unique(c_local[group], return_inverse=True)
        # Weight 1 per pair plus an IoU bonus that sums to < 1 over any matching,
        # so the number of pairs always wins and summed IoU breaks ties.
        bonus = 1.0 / (min(g_rows.size, g_cols.size) + 1)
        weights = np.zeros((g_rows.size, g_cols.size))
        weights[g_r, g_c] = 1.0 + bonus * iou[edges]
        picked_r, picked_c = linear_sum_assignment(weights, maximize=True)
        lookup = {(r, c): e for r, c, e in zip(g_r.tolist(), g_c.tolist(), edges.tolist())}
        for r, c in zip(picked_r.tolist(), picked_c.tolist()):
            edge = lookup.get((r, c))
            if edge is not None:
                chosen[edge] = True
    return chosen


def match_labels(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    thresholds=DEFAULT_THRESHOLDS,
) -> MatchCounts:
    """Match predicted objects to true objects one-to-one by IoU, per threshold.

    Parameters
    ----------
    gt, pred : ndarray of int, same shape
        Ground-truth and predicted label images (0 = background). Labels need
        not be consecutive; 2-D or 3-D.
    thresholds : sequence of float, optional
        IoU thresholds in (0, 1]; a pair counts as a match when IoU >= t.

    Returns
    -------
    MatchCounts
        TP/FP/FN and summed matched IoU for each threshold.

    Raises
    ------
    InputError
        If the shapes differ, a label image is not integer or has negative
        values, or a threshold is outside (0, 1].

    Notes
    -----
    Above 0.5 each object can reach the threshold with at most one partner, so
    every qualifying pair is a match. At 0.5 and below, the matching with the
    most pairs is found with ``scipy.optimize.linear_sum_assignment`` on each
    connected group of candidate pairs (ties broken by summed IoU).

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 0]])
    >>> pred = np.array([[2, 2, 2, 0, 0, 3]])
    >>> counts = match_labels(gt, pred, thresholds=(0.5, 0.8))
    >>> counts.tp.tolist(), counts.fp.tolist(), counts.fn.tolist()
    ([1, 0], [1, 2], [0, 1])
    >>> counts.mean_matched_iou.tolist()
    [0.75, 0.0]
    """
    values = _check_thresholds(thresholds)
    pairs = iou_pairs(gt, pred)
    n_true = pairs["true_labels"].size
    n_pred = pairs["pred_labels"].size
    rows, cols, iou = pairs["rows"], pairs["cols"], pairs["iou"]
    tp = np.zeros(values.size, dtype=np.int64)
    sum_iou = np.zeros(values.size, dtype=np.float64)
    for k, threshold in enumerate(values):
        keep = iou >= threshold
        if threshold > 0.5:
            matched = iou[keep]
        else:
            candidates = np.flatnonzero(keep)
            matched = iou[candidates[_match_pairs(rows[candidates], cols[candidates], iou[candidates])]]
        tp[k] = matched.size
        sum_iou[k] = float(matched.sum())
    return MatchCounts(
        thresholds=values,
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        sum_matched_iou=sum_iou,
        n_true=n_true,
        n_pred=n_pred,
    )


def pixel_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Foreground Dice and IoU, ignoring object identities.

    Parameters
    ----------
    gt, pred : ndarray, same shape
        Label or binary images; any non-zero pixel is foreground.

    Returns
    -------
    dict
        ``{"dice": float, "iou": float, "true_pixels": int, "pred_pixels": int,
        "intersection": int}``. Both images empty gives Dice = IoU = 1.

    Raises
    ------
    InputError
        If the shapes differ.

    Examples
    --------
    >>> scores = pixel_scores(np.array([1, 1, 0, 0]), np.array([0, 3, 3, 0]))
    >>> scores["dice"], round(scores["iou"], 4)
    (0.5, 0.3333)
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(f"shape mismatch: ground truth {gt.shape} vs prediction {pred.shape}")
    fg_true = gt != 0
    fg_pred = pred != 0
    n_true = int(np.count_nonzero(fg_true))
    n_pred = int(np.count_nonzero(fg_pred))
    inter = int(np.count_nonzero(fg_true & fg_pred))
    total = n_true + n_pred
    dice = 2.0 * inter / total if total else 1.0
    iou = inter / (total - inter) if total else 1.0
    return {"dice": dice, "iou": iou, "true_pixels": n_true, "pred_pixels": n_pred, "intersection": inter}
