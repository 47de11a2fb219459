"""Tests for patch augmentation: image and target must stay aligned."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from segtool.errors import InputError
from segtool.unet.augment import AugmentOptions, augment_pair, elastic_field

GEOMETRY_ONLY = AugmentOptions(intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)


def label_patch(size=48):
    labels = np.zeros((size, size), np.float32)
    labels[disk((14, 16), 9)] = 1
    labels[disk((30, 30), 10)] = 2
    labels[2:8, 36:46] = 3  # an asymmetric bar: any flip or rotation moves it
    return labels


@pytest.mark.parametrize("seed", range(12))
def test_flips_and_rotations_move_image_and_target_together(seed):
    labels = label_patch()
    image = labels[None] * 10.0 + 1.0
    target = np.stack([labels, labels * 2])
    out_img, out_tgt = augment_pair(image, target, np.random.default_rng(seed), options=GEOMETRY_ONLY)
    assert np.array_equal(out_img[0], out_tgt[0] * 10.0 + 1.0)
    assert np.array_equal(out_tgt[1], out_tgt[0] * 2)
    # the result is one of the 8 symmetries of the square
    symmetries = [np.rot90(f, k) for f in (labels, labels[::-1]) for k in range(4)]
    assert any(np.array_equal(out_tgt[0], s) for s in symmetries)


def test_all_eight_symmetries_occur():
    labels = label_patch()
    seen = set()
    for seed in range(64):
        _, tgt = augment_pair(labels[None], labels[None], np.random.default_rng(seed), options=GEOMETRY_ONLY)
        seen.add(tgt.tobytes())
    assert len(seen) == 8


@pytest.mark.parametrize("seed", range(5))
def test_elastic_deformation_keeps_image_and_target_aligned(seed):
    labels = label_patch(64)
    options = AugmentOptions(flip=True, rotate90=True, intensity_scale=0, intensity_shift=0, noise_std=0, elastic=True, elastic_alpha=4.0, elastic_spacing=16)
    img, tgt = augment_pair(labels[None], labels[None], np.random.default_rng(seed), options=options)
    assert not np.array_equal(tgt[0], np.rot90(labels, 0))  # something moved
    # the target stays a label image (nearest interpolation)
    assert set(np.unique(tgt)) <= {0.0, 1.0, 2.0, 3.0}
    # the linearly interpolated image agrees with the nearest-neighbour target away from edges
    agree = np.isclose(img[0], tgt[0], atol=0.5)
    assert agree.mean() > 0.97
    # and objects keep roughly their area
    for value in (1, 2):
        assert abs((tgt[0] == value).sum() / (labels == value).sum() - 1) < 0.5


def test_intensity_changes_only_the_image():
    labels = label_patch()
    options = AugmentOptions(flip=False, rotate90=False, intensity_scale=0.5, intensity_shift=0.2, noise_std=0.1)
    image = labels[None].copy()
    img, tgt = augment_pair(image, labels[None], np.random.default_rng(3), options=options)
    assert np.array_equal(tgt[0], labels)
    assert not np.allclose(img[0], labels)
    # intensity scale and shift are bounded: background mean stays near 0 +- shift
    assert abs(float(np.median(img[0][labels == 0]))) < 0.25


def test_noise_off_and_on():
    flat = np.zeros((1, 32, 32), np.float32)
    quiet, _ = augment_pair(flat, flat, np.random.default_rng(0), options=AugmentOptions.none())
    assert np.array_equal(quiet, flat)
    noisy, _ = augment_pair(flat, flat, np.random.default_rng(0), options=AugmentOptions(flip=False, rotate90=False, intensity_scale=0, intensity_shift=0, noise_std=0.5))
    assert 0 < noisy.std() < 0.6


def test_same_seed_same_result_and_inputs_untouched():
    labels = label_patch()
    image = labels[None] + 0.5
    before = image.copy()
    a = augment_pair(image, labels[None], np.random.default_rng(7), options=AugmentOptions(elastic=True))
    b = augment_pair(image, labels[None], np.random.default_rng(7), options=AugmentOptions(elastic=True))
    c = augment_pair(image, labels[None], np.random.default_rng(8), options=AugmentOptions(elastic=True))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(image, before)
    assert a[0].dtype == np.float32 and a[0].flags.c_contiguous and a[1].flags.c_contiguous


def test_elastic_field_is_smooth_with_the_requested_size():
    field = elastic_field((128, 96), np.random.default_rng(0), alpha=5.0, spacing=32)
    assert field.shape == (2, 128, 96)
    assert 1.0 < float(field.std()) < 10.0
    # neighbouring pixels move almost together
    assert float(np.abs(np.diff(field, axis=1)).max()) < 1.5


def test_rejects_mismatched_shapes_and_bad_options():
    with pytest.raises(InputError, match="equal H, W"):
        augment_pair(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), np.random.default_rng(0))
    with pytest.raises(InputError, match="noise_std"):
        AugmentOptions(noise_std=-1)


def test_options_roundtrip():
    options = AugmentOptions(elastic=True, noise_std=0.05)
    assert AugmentOptions.from_dict(options.to_dict()) == options
