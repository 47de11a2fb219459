"""Tests for segtool.infer.instances.maps_to_labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk, ellipse
from skimage.segmentation import find_boundaries

from segtool.errors import InputError
from segtool.infer.instances import maps_to_labels


def _disks(shape=(96, 128)):
    """Five disks: two touching pairs and one alone."""
    labels = np.zeros(shape, np.uint16)
    centres = [(30, 30), (30, 52), (70, 40), (58, 60), (60, 105)]
    for i, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), 12, shape=shape)
        labels[rr, cc] = i
    return labels


def _three_class_maps(labels):
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    interior = (labels > 0) & ~boundary
    maps = np.zeros((3,) + labels.shape, np.float32)
    maps[0] = labels == 0
    maps[1] = interior
    maps[2] = boundary
    return maps


def _distance_maps(labels):
    maps = np.zeros((2,) + labels.shape, np.float32)
    maps[0] = labels > 0
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        padded = np.pad(labels[region] == index, 1)
        dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
        maps[1][region][labels[region] == index] = (dist / dist.max())[labels[region] == index]
    return maps


def _three_class_distance_maps(labels):
    return np.concatenate([_three_class_maps(labels), _distance_maps(labels)[1:]])


def _pairs(gt, pred):
    """Map each true label to the predicted label covering most of it, with the IoU."""
    out = {}
    for i in range(1, int(gt.max()) + 1):
        under = pred[gt == i]
        j = np.bincount(under).argmax()
        inter = np.sum((gt == i) & (pred == j))
        union = np.sum((gt == i) | (pred == j))
        out[i] = (j, inter / union if j else 0.0)
    return out


@pytest.mark.parametrize(
    "target, make",
    [("three_class", _three_class_maps), ("distance", _distance_maps), ("three_class_distance", _three_class_distance_maps)],
)
def test_recovers_touching_disks(target, make):
    gt = _disks()
    maps = make(gt)
    before = maps.copy()
    labels = maps_to_labels(maps, target=target, min_size=10)
    np.testing.assert_array_equal(maps, before)
    assert labels.dtype == np.uint16 and labels.shape == gt.shape
    assert labels.max() == gt.max() == len(np.unique(labels)) - 1
    pairs = _pairs(gt, labels)
    assert len({j for j, _ in pairs.values()}) == 5
    assert min(iou for _, iou in pairs.values()) > 0.9


@pytest.mark.parametrize("target, channels", [("three_class", 3), ("distance", 2), ("three_class_distance", 4)])
def test_blank_maps_give_no_objects(target, channels):
    maps = np.zeros((channels, 40, 50), np.float32)
    if target != "distance":
        maps[0] = 1.0
    labels = maps_to_labels(maps, target=target)
    assert labels.dtype == np.uint16 and labels.shape == (40, 50) and labels.max() == 0


def test_three_class_distance_seeds_come_from_the_distance_channel():
    # The interior channel joins the touching pairs (no boundary between them), as a network does when
    # it misses a contact line; the distance channel still dips there, so its seeds split them.
    gt = _disks()
    maps = _three_class_distance_maps(gt)
    objects = gt > 0
    maps[1], maps[2] = objects & ~find_boundaries(objects, mode="inner"), find_boundaries(objects, mode="inner")
    assert maps_to_labels(maps[:3], target="three_class", min_size=10).max() == 3
    labels = maps_to_labels(maps, target="three_class_distance", min_size=10)
    assert labels.max() == 5
    assert min(iou for _, iou in _pairs(gt, labels).values()) > 0.85
    # ... and the outline from the class channels: background where the classes say so.
    maps[0][:, 90:], maps[1][:, 90:], maps[2][:, 90:] = 1.0, 0.0, 0.0  # the lone disk, 93-117
    assert maps_to_labels(maps, target="three_class_distance", min_size=10).max() == 4


def test_min_size_drops_small_objects_and_renumbers():
    maps = np.zeros((2, 30, 30), np.float32)
    maps[:, 2:4, 2:4] = 1.0  # 4 pixels
    maps[:, 10:20, 10:20] = 1.0  # 100 pixels
    maps[:, 22:28, 2:8] = 1.0  # 36 pixels
    labels = maps_to_labels(maps, target="distance", min_size=20)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[3, 3] == 0 and labels[15, 15] > 0 and labels[25, 5] > 0


def test_foreground_without_seed_is_kept():
    maps = np.zeros((3, 30, 30), np.float32)
    maps[0] = 1.0
    maps[0, 5:15, 5:15] = 0.1  # foreground
    maps[2, 5:15, 5:15] = 0.9  # boundary-ish everywhere, no interior above 0.5
    labels = maps_to_labels(maps, target="three_class", min_size=1)
    assert labels.max() == 1 and (labels > 0).sum() == 100


def test_thresholds_change_the_result():
    gt = _disks()
    maps = _distance_maps(gt)
    maps[0] *= 0.6
    assert maps_to_labels(maps, target="distance", prob_threshold=0.5).max() == 5
    assert maps_to_labels(maps, target="distance", prob_threshold=0.7).max() == 0


def test_many_objects_switch_to_uint32():
    maps = np.zeros((2, 520, 520), np.float32)
    maps[:, ::2, ::2] = 1.0  # 260 * 260 = 67600 isolated single pixels
    labels = maps_to_labels(maps, target="distance", min_size=1)
    assert labels.dtype == np.uint32 and int(labels.max()) == 67600


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": "stardist"}, "unknown target"),
        ({"target": "distance"}, r"needs maps of shape \(2, H, W\)"),
        ({"target": "three_class", "prob_threshold": 1.5}, "prob_threshold"),
        ({"target": "three_class", "seed_threshold": -1}, "seed_threshold"),
        ({"target": "three_class", "min_size": -1}, "min_size"),
        ({"target": "three_class", "split_height": 0}, "split_height"),
        ({"target": "three_class", "split_height": "deep"}, "split_height"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        maps_to_labels(np.zeros((3, 8, 8), np.float32), **kwargs)


def _joined_interior_maps(gap_rows: int):
    """three_class maps of two discs (radius 9 and 8) whose interiors are joined by a neck.

    The neck is what the network gives for small touching nuclei: the boundary
    between them is too faint to cut the interior apart.
    """
    shape = (40, 60)
    truth = np.zeros(shape, np.uint16)
    for index, (centre, radius) in enumerate([((20, 20), 9), ((20, 36), 8)], start=1):
        rr, cc = disk(centre, radius, shape=shape)
        truth[rr, cc] = index
    interior = ndimage.binary_erosion(truth > 0, iterations=1)
    interior[20 - gap_rows // 2 : 20 + gap_rows // 2 + 1, 20:38] = True  # the neck
    maps = np.zeros((3,) + shape, np.float32)
    maps[1] = interior
    maps[2] = (truth > 0) & ~interior
    maps[0] = truth == 0
    return truth, maps


def test_split_height_separates_a_neck_the_plain_seeds_merge():
    truth, maps = _joined_interior_maps(gap_rows=4)
    merged = maps_to_labels(maps, target="three_class", min_size=10)
    split = maps_to_labels(maps, target="three_class", min_size=10, split_height=0.5)
    assert merged.max() == 1
    assert split.max() == 2
    pairs = _pairs(truth, split)
    assert {j for j, _ in pairs.values()} == {1, 2}
    assert min(iou for _, iou in pairs.values()) > 0.8


def test_split_height_keeps_single_and_elongated_objects_whole():
    shape = (60, 80)
    truth = np.zeros(shape, np.uint16)
    rr, cc = disk((30, 20), 12, shape=shape)
    truth[rr, cc] = 1
    rr, cc = ellipse(30, 58, 8, 18, shape=shape)  # 2.2:1, one nucleus, no neck
    truth[rr, cc] = 2
    truth[2:5, 2:5] = 3  # too small to hold an h-maximum: keeps its plain seed
    maps = _three_class_maps(truth)
    labels = maps_to_labels(maps, target="three_class", min_size=1, split_height=0.5)
    assert labels.max() == 3
    assert min(iou for _, iou in _pairs(truth, labels).values()) > 0.9


def test_split_height_deeper_than_the_neck_keeps_objects_joined():
    _, maps = _joined_interior_maps(gap_rows=10)  # a wide neck: the saddle is only ~1 px lower
    assert maps_to_labels(maps, target="three_class", min_size=10, split_height=0.5).max() == 2
    assert maps_to_labels(maps, target="three_class", min_size=10, split_height=3.0).max() == 1


@pytest.mark.parametrize("target", ["distance", "three_class", "three_class_distance"])
def test_number_as_whole_restores_the_whole_image_numbering(target):
    from segtool.infer.instances import number_as_whole

    rng = np.random.default_rng(3)
    maps = ndimage.gaussian_filter(rng.random((4, 120, 90)), (0, 3, 3)).astype(np.float32)
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    maps = maps[: {"distance": 2, "three_class": 3, "three_class_distance": 4}[target]]
    options = {"prob_threshold": 0.4, "seed_threshold": 0.55, "min_size": 4}
    whole = maps_to_labels(maps, target=target, **options)
    assert whole.max() >= 5
    # the same objects under shuffled numbers (as bands number them): the whole image's numbers come back
    shuffled = np.concatenate([[0], rng.permutation(int(whole.max())) + 1])[whole]
    again = number_as_whole(shuffled, maps, target=target, **options)
    assert again.dtype == whole.dtype
    np.testing.assert_array_equal(again, whole)
    with pytest.raises(InputError, match="split_height"):
        number_as_whole(shuffled, maps, target=target, split_height=2.0)


def test_number_as_whole_puts_unseeded_objects_last():
    from segtool.infer.instances import number_as_whole

    maps = np.zeros((2, 10, 20), np.float32)
    maps[0, 1:4, 1:4] = 1.0  # foreground without a seed, first in raster order
    maps[0, 5:9, 10:14] = 1.0
    maps[1, 5:9, 10:14] = 0.9  # seeded
    whole = maps_to_labels(maps, target="distance", min_size=1)
    assert whole[2, 2] == 2 and whole[6, 11] == 1
    swapped = np.where(whole > 0, 3 - whole.astype(np.int64), 0)
    np.testing.assert_array_equal(number_as_whole(swapped, maps, target="distance", min_size=1), whole)


@pytest.mark.parametrize(
    "target, make, used",
    [("three_class", _three_class_maps, (0, 1)), ("distance", _distance_maps, (0, 1)),
     ("three_class_distance", _three_class_distance_maps, (0, 3))],
)
def test_the_label_channels_alone_give_the_same_labels(target, make, used):
    from segtool.infer.instances import LABEL_CHANNELS

    maps = make(_disks())
    for unread in set(range(maps.shape[0])) - set(used):
        maps[unread] = 0.123  # any values: the labelling never reads them
    assert LABEL_CHANNELS[target] == used
    whole = maps_to_labels(maps, target=target, min_size=10)
    alone = maps_to_labels(maps[list(used)], target=target, min_size=10, label_channels_only=True)
    np.testing.assert_array_equal(alone, whole)
    assert whole.max() == 5
    if maps.shape[0] > 2:  # all the channels, where only two are expected
        with pytest.raises(InputError, match=r"needs maps of shape \(2, H, W\)"):
            maps_to_labels(maps, target=target, label_channels_only=True)
