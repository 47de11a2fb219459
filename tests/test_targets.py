"""Tests for training targets derived from instance labels, and their losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.draw import disk

from segtool.errors import InputError
from segtool.train.targets import (
    class_weights,
    distance_target,
    make_target,
    target_loss,
    three_class_target,
)


def touching_disks():
    labels = np.zeros((40, 60), np.uint16)
    labels[disk((20, 18), 10)] = 1
    labels[disk((20, 36), 10)] = 2  # overlaps disk 1: shares a straight contact
    labels[disk((8, 52), 5)] = 3  # cut by nothing, alone
    return labels


def test_three_class_on_touching_objects_separates_interiors():
    labels = touching_disks()
    classes = three_class_target(labels)
    assert classes.dtype == np.uint8
    assert set(np.unique(classes)) == {0, 1, 2}
    # background stays background, every object pixel is interior or boundary
    assert np.array_equal(classes == 0, labels == 0)
    # on the contact column both sides are boundary
    contact = np.nonzero((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert contact[0].size > 0
    assert (classes[contact[0], contact[1]] == 2).all()
    assert (classes[contact[0], contact[1] + 1] == 2).all()
    # interiors of different objects never touch, even diagonally: one component per object
    interior_components, n = ndi.label(classes == 1, structure=np.ones((3, 3)))
    assert n == 3
    for comp in range(1, n + 1):
        assert len(np.unique(labels[interior_components == comp])) == 1


def test_three_class_boundary_is_object_pixels_next_to_another_label():
    labels = np.zeros((7, 7), int)
    labels[1:6, 1:6] = 4
    classes = three_class_target(labels)
    expected = np.zeros((7, 7), np.uint8)
    expected[1:6, 1:6] = 2
    expected[2:5, 2:5] = 1
    assert np.array_equal(classes, expected)


def test_three_class_image_edge_is_not_a_boundary():
    labels = np.ones((4, 4), np.uint16)
    assert (three_class_target(labels) == 1).all()


def test_three_class_does_not_modify_input():
    labels = touching_disks()
    before = labels.copy()
    three_class_target(labels)
    assert np.array_equal(labels, before)


def test_distance_target_is_normalised_per_object():
    labels = touching_disks()
    target = distance_target(labels)
    assert target.shape == (2, 40, 60) and target.dtype == np.float32
    assert np.array_equal(target[0] == 1, labels > 0)
    assert (target[1][labels == 0] == 0).all()
    for index in (1, 2, 3):
        values = target[1][labels == index]
        assert values.max() == pytest.approx(1.0)
        assert values.min() > 0
    # the touching side of disk 1 is low, its centre is high
    assert target[1, 20, 18] == pytest.approx(1.0, abs=0.15)
    assert target[1, 20, 27] < 0.3


def test_distance_target_with_a_split_label_and_missing_labels():
    labels = np.zeros((5, 12), int)
    labels[1:4, 1:4] = 5  # labels 1-4 absent
    labels[1:4, 7:10] = 5  # the same label twice
    target = distance_target(labels)
    assert target[1, 2, 2] == pytest.approx(1.0) and target[1, 2, 8] == pytest.approx(1.0)


@pytest.mark.parametrize("bad, match", [(np.zeros((2, 2), np.float32), "integer"), (np.zeros(4, int), "2-D"), (-np.ones((2, 2), int), "negative")])
def test_targets_reject_bad_labels(bad, match):
    with pytest.raises(InputError, match=match):
        three_class_target(bad)
    with pytest.raises(InputError, match=match):
        distance_target(bad)


def test_make_target_shapes():
    labels = touching_disks()
    assert make_target(labels, "three_class").shape == (1, 40, 60)
    assert make_target(labels, "distance").shape == (2, 40, 60)
    both = make_target(labels, "three_class_distance")
    assert both.shape == (2, 40, 60) and both.dtype == np.float32
    np.testing.assert_array_equal(both[0], three_class_target(labels))
    np.testing.assert_array_equal(both[1], distance_target(labels)[1])
    with pytest.raises(InputError, match="unknown target"):
        make_target(labels, "edges")


def test_class_weights_favour_rare_classes_and_average_to_one():
    classes = three_class_target(touching_disks())
    weights = class_weights([classes])
    freq = np.bincount(classes.ravel(), minlength=3) / classes.size
    assert weights.dtype == np.float32
    assert weights[0] < weights[1]
    assert float((weights * freq).sum()) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(class_weights([np.zeros((3, 3), int)]), [1.0, 1.0, 1.0])


def _right_classes(classes):
    return torch.nn.functional.one_hot(classes.long(), 3).permute(2, 0, 1)[None].float() * 20 - 10


@pytest.mark.parametrize("kind", ["three_class", "distance", "three_class_distance"])
def test_loss_is_lower_for_the_right_answer(kind):
    labels = touching_disks()
    target = torch.from_numpy(make_target(labels, kind))[None]
    if kind == "three_class":
        good = _right_classes(target[0, 0])
    elif kind == "three_class_distance":
        good = torch.cat([_right_classes(target[0, 0]), torch.logit(target[:, 1:].clamp(0.01, 0.99))], dim=1)
    else:
        good = torch.logit(target.clamp(0.01, 0.99))
    bad = torch.zeros_like(good)
    assert float(target_loss(good, target, kind)) < float(target_loss(bad, target, kind))


def test_loss_gradients_flow_and_weights_apply():
    labels = touching_disks()
    target = torch.from_numpy(make_target(labels, "three_class"))[None]
    logits = torch.randn(1, 3, 40, 60, generator=torch.Generator().manual_seed(0)).requires_grad_()
    weights = torch.tensor([0.1, 1.0, 5.0])
    loss = target_loss(logits, target, "three_class", weights=weights)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    unweighted = target_loss(logits.detach(), target, "three_class")
    assert float(loss.detach()) != pytest.approx(float(unweighted))


def test_three_class_distance_loss_scores_the_distance_inside_objects_only():
    labels = touching_disks()
    target = torch.from_numpy(make_target(labels, "three_class_distance"))[None]
    inside = target[:, :1] > 0
    right = torch.cat([_right_classes(target[0, 0]), torch.logit(target[:, 1:].clamp(0.01, 0.99))], dim=1)
    base = float(target_loss(right, target, "three_class_distance"))

    wrong_inside = right.clone()
    wrong_inside[:, 3:][inside] = -5.0  # says "border" at object centres
    assert float(target_loss(wrong_inside, target, "three_class_distance")) > base + 0.5

    anything_outside = right.clone()
    anything_outside[:, 3:][~inside] = 7.0  # background: the classes decide, the distance is not scored
    assert float(target_loss(anything_outside, target, "three_class_distance")) == pytest.approx(base)
