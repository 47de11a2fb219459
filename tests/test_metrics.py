"""Instance matching and scores: hand-made label pairs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk

from segtool.errors import InputError
from segtool.io import read_labels
from segtool.metrics import DEFAULT_THRESHOLDS, MatchCounts, iou_pairs, match_labels, pixel_scores


def squares(shape=(64, 64), boxes=((5, 5, 10), (30, 30, 10)), dtype=np.uint16):
    """Label image with one square per (row, col, side) box, labels 1..n."""
    labels = np.zeros(shape, dtype=dtype)
    for label, (r, c, side) in enumerate(boxes, start=1):
        labels[r : r + side, c : c + side] = label
    return labels


def disks(shape=(128, 128), centres=((30, 30), (30, 90), (90, 60)), radius=12):
    labels = np.zeros(shape, dtype=np.uint16)
    for label, centre in enumerate(centres, start=1):
        labels[disk(centre, radius, shape=shape)] = label
    return labels


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_prediction_scores_one_everywhere():
    gt = disks()
    pred = gt.copy()
    pred[pred > 0] += 10  # label values need not agree
    counts = match_labels(gt, pred)
    assert counts.tp.tolist() == [3] * 10 and counts.fp.sum() == 0 and counts.fn.sum() == 0
    for scores in (counts.precision, counts.recall, counts.f1, counts.ap, counts.mean_matched_iou, counts.panoptic_quality):
        np.testing.assert_allclose(scores, 1.0)


def test_shifted_squares_match_only_up_to_their_iou():
    gt = squares(boxes=((5, 5, 10),))
    pred = squares(boxes=((5, 7, 10),))  # shifted 2 px: overlap 80, union 120, IoU 2/3
    counts = match_labels(gt, pred, thresholds=(0.5, 0.6, 2 / 3, 0.7, 0.9))
    assert counts.tp.tolist() == [1, 1, 1, 0, 0]
    assert counts.fp.tolist() == [0, 0, 0, 1, 1]
    assert counts.fn.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(counts.mean_matched_iou, [2 / 3, 2 / 3, 2 / 3, 0, 0])
    np.testing.assert_allclose(counts.panoptic_quality, [2 / 3, 2 / 3, 2 / 3, 0, 0])


def test_split_object_matches_one_half_at_most():
    gt = squares(boxes=((0, 0, 10),))
    pred = np.zeros_like(gt)
    pred[0:10, 0:5] = 1
    pred[0:10, 5:10] = 2  # each half has IoU exactly 0.5 with the true square
    counts = match_labels(gt, pred, thresholds=(0.3, 0.5, 0.55))
    assert counts.tp.tolist() == [1, 1, 0]
    assert counts.fp.tolist() == [1, 1, 2]
    assert counts.fn.tolist() == [0, 0, 1]
    np.testing.assert_allclose(counts.ap, [0.5, 0.5, 0.0])


def test_merged_objects_match_one_true_object():
    pred = squares(boxes=((0, 0, 10),))
    gt = np.zeros_like(pred)
    gt[0:10, 0:5] = 1
    gt[0:10, 5:10] = 2
    counts = match_labels(gt, pred, thresholds=(0.5, 0.55))
    assert counts.tp.tolist() == [1, 0]
    assert counts.fn.tolist() == [1, 2]
    assert counts.fp.tolist() == [0, 1]
    np.testing.assert_allclose(counts.recall, [0.5, 0.0])
    np.testing.assert_allclose(counts.precision, [1.0, 0.0])


def test_missing_and_extra_objects():
    gt = disks()
    missing = gt.copy()
    missing[missing == 2] = 0
    counts = match_labels(gt, missing, thresholds=(0.5,))
    assert (counts.tp[0], counts.fp[0], counts.fn[0]) == (2, 0, 1)
    assert counts.ap[0] == pytest.approx(2 / 3) and counts.f1[0] == pytest.approx(0.8)

    extra = gt.copy()
    extra[100:110, 5:15] = 9
    counts = match_labels(gt, extra, thresholds=(0.5,))
    assert (counts.tp[0], counts.fp[0], counts.fn[0]) == (3, 1, 0)
    assert counts.precision[0] == pytest.approx(0.75) and counts.recall[0] == 1.0


def test_empty_images_give_perfect_or_zero_scores_never_nan():
    empty = np.zeros((16, 16), np.uint16)
    one = squares((16, 16), boxes=((2, 2, 4),))
    both_empty = match_labels(empty, empty)
    assert both_empty.n_true == both_empty.n_pred == 0
    for scores in (both_empty.precision, both_empty.recall, both_empty.f1, both_empty.ap, both_empty.mean_matched_iou, both_empty.panoptic_quality):
        np.testing.assert_array_equal(scores, 1.0)
    for counts in (match_labels(empty, one), match_labels(one, empty)):
        for scores in (counts.precision, counts.recall, counts.f1, counts.ap, counts.mean_matched_iou, counts.panoptic_quality):
            assert not np.isnan(scores).any()
            np.testing.assert_array_equal(scores, 0.0)
    assert match_labels(empty, one).fp.tolist() == [1] * 10
    assert match_labels(one, empty).fn.tolist() == [1] * 10
    assert pixel_scores(empty, empty)["dice"] == 1.0 and pixel_scores(empty, empty)["iou"] == 1.0
    assert pixel_scores(one, empty)["dice"] == 0.0


def test_threshold_is_inclusive_and_validated():
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :] = 1
    pred = np.zeros_like(gt)
    pred[:, :2] = 1  # IoU exactly 0.5
    assert match_labels(gt, pred, thresholds=(0.5,)).tp.tolist() == [1]
    assert match_labels(gt, pred, thresholds=(0.5 + 1e-9,)).tp.tolist() == [0]
    assert match_labels(gt, gt, thresholds=(1.0,)).tp.tolist() == [1]
    for bad in ((0.0,), (1.5,), (-0.1,), ()):
        with pytest.raises(InputError, match="threshold"):
            match_labels(gt, pred, thresholds=bad)


def test_low_threshold_uses_optimal_not_greedy_assignment():
    # 1-D objects with hand-computed IoUs: A-P 5/12, A-Q 3/10, B-P 2/8.
    # Greedy (best IoU first) pairs A-P and leaves B and Q alone: 1 match.
    # The optimal assignment pairs A-Q and B-P: 2 matches.
    gt = np.zeros(20, np.uint8)
    gt[0:10] = 1  # A
    gt[10:13] = 2  # B
    pred = np.zeros(20, np.uint8)
    pred[5:12] = 1  # P
    pred[0:3] = 2  # Q
    pairs = iou_pairs(gt, pred)
    assert sorted(np.round(pairs["iou"], 4).tolist()) == [0.25, 0.3, 0.4167]
    counts = match_labels(gt, pred, thresholds=(0.25, 0.3, 0.5))
    assert counts.tp.tolist() == [2, 1, 0]
    assert counts.sum_matched_iou[0] == pytest.approx(0.3 + 0.25)
    # With two pairings of equal size, the one with more summed IoU is taken.
    assert counts.sum_matched_iou[1] == pytest.approx(5 / 12)


def _reference_tp(gt, pred, threshold):
    """Brute force: dense IoU matrix from masks, maximum matching by assignment on (IoU >= t)."""
    t_ids = [v for v in np.unique(gt) if v]
    p_ids = [v for v in np.unique(pred) if v]
    if not t_ids or not p_ids:
        return 0
    iou = np.zeros((len(t_ids), len(p_ids)))
    for i, a in enumerate(t_ids):
        for j, b in enumerate(p_ids):
            inter = np.sum((gt == a) & (pred == b))
            iou[i, j] = inter / np.sum((gt == a) | (pred == b))
    ok = (iou >= threshold).astype(float)
    rows, cols = linear_sum_assignment(ok, maximize=True)
    return int(ok[rows, cols].sum())


def test_matches_brute_force_on_random_label_images():
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = tuple(rng.integers(4, 12, size=2))
        gt = rng.integers(0, 5, size=shape)
        pred = rng.integers(0, 5, size=shape)
        thresholds = (0.1, 0.2, 0.34, 0.5, 0.7)
        counts = match_labels(gt, pred, thresholds=thresholds)
        assert counts.tp.tolist() == [_reference_tp(gt, pred, t) for t in thresholds]
        assert (counts.tp + counts.fp == counts.n_pred).all() and (counts.tp + counts.fn == counts.n_true).all()


def test_dataset_totals_come_from_summed_counts():
    perfect = squares(boxes=((5, 5, 10),))
    gt_many = squares((64, 64), boxes=[(r, c, 4) for r in range(0, 60, 20) for c in range(0, 60, 20)])  # 9 objects
    miss_all = np.zeros_like(gt_many)
    first = match_labels(perfect, perfect, thresholds=(0.5,))
    second = match_labels(gt_many, miss_all, thresholds=(0.5,))
    total = first + second
    assert (total.tp[0], total.fp[0], total.fn[0], total.n_true, total.n_pred) == (1, 0, 9, 10, 1)
    assert total.ap[0] == pytest.approx(0.1)  # not the mean of per-image AP (0.5)
    assert (first.ap[0] + second.ap[0]) / 2 == pytest.approx(0.5)
    summed = sum([first, second])
    assert summed.tp.tolist() == total.tp.tolist() and summed.n_true == 10
    with pytest.raises(ValueError, match="thresholds"):
        first + match_labels(perfect, perfect, thresholds=(0.5, 0.7))


def test_counts_are_read_only_and_json_safe():
    counts = match_labels(disks(), disks(), thresholds=(0.5, 0.75))
    with pytest.raises(ValueError):
        counts.tp[0] = 5
    rows = counts.to_rows()
    assert [r["threshold"] for r in rows] == [0.5, 0.75]
    assert json.loads(json.dumps(rows)) == rows
    assert isinstance(MatchCounts(thresholds=[0.5], tp=[1], fp=[0], fn=[0], sum_matched_iou=[1.0], n_true=1, n_pred=1), MatchCounts)


def test_large_and_sparse_label_values():
    gt = disks()
    # Labels above 65535 (uint32), and huge sparse values that need np.unique instead of a lookup table.
    for offset in (70_000, 4_000_000_000):
        pred = gt.astype(np.uint32)
        pred[pred > 0] += offset
        counts = match_labels(gt, pred, thresholds=(0.5,))
        assert counts.tp.tolist() == [3] and counts.n_pred == 3
        pairs = iou_pairs(gt, pred)
        assert pairs["pred_labels"].tolist() == [offset + 1, offset + 2, offset + 3]


def test_more_than_65535_objects():
    side = 600
    gt = np.zeros((side, side), np.uint32)
    gt[::2, ::2] = np.arange(1, (side // 2) ** 2 + 1, dtype=np.uint32).reshape(side // 2, side // 2)
    assert gt.max() == 90_000
    pred = gt.copy()
    pred[:2] = 0  # drop the first row of objects
    counts = match_labels(gt, pred, thresholds=(0.5,))
    assert (counts.tp[0], counts.fn[0], counts.fp[0]) == (90_000 - 300, 300, 0)


def test_touching_objects_with_shared_border():
    gt = np.zeros((10, 20), np.uint16)
    gt[:, :10] = 1
    gt[:, 10:] = 2
    pred = np.zeros_like(gt)
    pred[:, :11] = 1  # border moved by one column
    pred[:, 11:] = 2
    counts = match_labels(gt, pred, thresholds=(0.8, 0.95))
    assert counts.tp.tolist() == [2, 0]
    np.testing.assert_allclose(counts.sum_matched_iou[0], 10 / 11 + 9 / 10)


def test_three_dimensional_labels():
    gt = np.zeros((4, 8, 8), np.uint16)
    gt[1:3, 2:6, 2:6] = 1
    assert match_labels(gt, gt, thresholds=(0.9,)).tp.tolist() == [1]


def test_input_errors():
    gt = squares()
    with pytest.raises(InputError, match="shape mismatch"):
        match_labels(gt, gt[:10])
    with pytest.raises(InputError, match="dtype float"):
        match_labels(gt.astype(np.float32), gt)
    with pytest.raises(InputError, match="negative"):
        match_labels(gt.astype(np.int32) - 1, gt)
    with pytest.raises(InputError, match="shape mismatch"):
        pixel_scores(gt, gt[:10])


def test_inputs_are_not_modified():
    gt, pred = disks(), disks(centres=((32, 30), (30, 92), (90, 60)))
    gt_copy, pred_copy = gt.copy(), pred.copy()
    match_labels(gt, pred)
    pixel_scores(gt, pred)
    np.testing.assert_array_equal(gt, gt_copy)
    np.testing.assert_array_equal(pred, pred_copy)


def test_pixel_scores_known_values():
    gt = squares((20, 20), boxes=((0, 0, 10),))
    pred = squares((20, 20), boxes=((0, 5, 10),))
    scores = pixel_scores(gt, pred)
    assert scores["intersection"] == 50 and scores["true_pixels"] == scores["pred_pixels"] == 100
    assert scores["dice"] == pytest.approx(0.5) and scores["iou"] == pytest.approx(1 / 3)


def test_real_mask_against_eroded_copy(sample_masks):
    from skimage.morphology import disk as footprint, erosion

    gt = read_labels(sample_masks[0]).data
    pred = erosion(gt, footprint(1))
    counts = match_labels(gt, pred)
    n = counts.n_true
    assert counts.n_pred == n  # no nucleus vanishes after a 1-pixel erosion
    assert counts.tp[0] == n  # every eroded nucleus still has IoU >= 0.5
    assert counts.tp[-1] < n  # but not >= 0.95
    assert np.all(np.diff(counts.tp) <= 0)  # stricter thresholds never match more
