"""Tests for the microscope appearance changes (segtool.appearance)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from segtool.appearance import (
    adjust_gamma,
    gaussian_blur,
    jpeg_artifacts,
    offset_gradient,
    reference_levels,
    saturate_objects,
    saturated_blobs,
    shot_noise,
)
from segtool.errors import InputError


def nuclei(shape=(96, 96), background=100.0, level=500.0):
    """A dim-background field with six round nuclei of radius 8; returns (image, mask)."""
    mask = np.zeros(shape, bool)
    for centre in [(20, 20), (20, 60), (50, 40), (75, 20), (75, 75), (45, 80)]:
        mask[disk(centre, 8, shape=shape)] = True
    image = np.where(mask, level, background).astype(np.float32)
    return image, mask


CHANGES = {
    "gamma": lambda img, rng: adjust_gamma(img, 2.0),
    "blur": lambda img, rng: gaussian_blur(img, 2.0),
    "noise": lambda img, rng: shot_noise(img, rng, photons=20),
    "offset": lambda img, rng: offset_gradient(img, rng, smooth=True),
    "blobs": lambda img, rng: saturated_blobs(img, rng, count=3, diameter=16),
    "saturate": lambda img, rng: saturate_objects(img, img > 300, rng, count=2, diameter=16),
    "jpeg": lambda img, rng: jpeg_artifacts(img, quality=60),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_input_untouched_output_float32_and_seeded(name):
    image, _ = nuclei()
    image += np.linspace(0.0, 50.0, image.shape[1], dtype=np.float32)  # mid-tones, for gamma
    before = image.copy()
    first = CHANGES[name](image, np.random.default_rng(3))
    again = CHANGES[name](image, np.random.default_rng(3))
    assert np.array_equal(image, before)
    assert first.dtype == np.float32 and first.shape == image.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, image)


@pytest.mark.parametrize("name", ["noise", "offset", "blobs", "saturate"])
def test_random_changes_depend_on_the_seed(name):
    image, _ = nuclei()
    a = CHANGES[name](image, np.random.default_rng(0))
    b = CHANGES[name](image, np.random.default_rng(1))
    assert not np.array_equal(a, b)


def test_integer_input_is_accepted_and_not_cast_in_place():
    image, _ = nuclei()
    as_int = image.astype(np.uint16)
    out = adjust_gamma(as_int, 0.5)
    assert out.dtype == np.float32 and as_int.dtype == np.uint16


def test_reference_levels_from_otsu_and_from_a_mask():
    image, mask = nuclei()
    assert reference_levels(image) == (100.0, 500.0)
    # a mask that calls one quarter of the background "object" lowers the object level
    wrong = mask.copy()
    wrong[:24] = True
    background, objects = reference_levels(image, wrong)
    assert background == 100.0 and 100.0 < objects < 500.0


def test_gamma_keeps_extremes_and_bends_midtones():
    ramp = np.linspace(10.0, 20.0, 11)[None]
    dark, bright = adjust_gamma(ramp, 2.0), adjust_gamma(ramp, 0.5)
    assert dark[0, 0] == 10.0 and dark[0, -1] == 20.0 and bright[0, -1] == 20.0
    assert dark[0, 5] == pytest.approx(12.5) and bright[0, 5] == pytest.approx(10 + 10 * 0.5**0.5)
    assert np.all(np.diff(dark) > 0)
    assert np.allclose(adjust_gamma(ramp, 1.0), ramp)


def test_blur_keeps_total_and_spreads_a_point_by_sigma():
    point = np.zeros((61, 61), np.float32)
    point[30, 30] = 1.0
    out = gaussian_blur(point, 3.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    yy, _ = np.mgrid[:61, :61]
    variance = float(((yy - 30) ** 2 * out).sum())
    assert variance == pytest.approx(9.0, rel=0.02)
    assert np.array_equal(gaussian_blur(point, 0), point)


def test_blur_leaves_channels_apart():
    image = np.zeros((9, 9, 2), np.float32)
    image[4, 4, 0] = 1.0
    out = gaussian_blur(image, 1.0)
    assert np.all(out[..., 1] == 0) and out[..., 0].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("photons", [20, 200])
def test_shot_noise_is_poisson_at_the_requested_count(photons):
    image, mask = nuclei(shape=(128, 128), background=0.0, level=3.0)
    out = shot_noise(image, np.random.default_rng(0), photons=photons)
    inside = out[mask]
    assert inside.mean() == pytest.approx(3.0, rel=0.05)
    # Poisson: relative standard deviation 1 / sqrt(photons)
    assert inside.std() / inside.mean() == pytest.approx(photons**-0.5, rel=0.1)
    assert np.all(out[~mask] == 0.0)  # the darkest level collects no photons
    counts = inside / 3.0 * photons
    assert np.allclose(counts, np.round(counts), atol=1e-3)  # whole photons


def test_shot_noise_uses_the_given_foreground():
    image, mask = nuclei(background=0.0, level=3.0)
    few = shot_noise(image, np.random.default_rng(0), photons=10, foreground=mask)
    many = shot_noise(image, np.random.default_rng(0), photons=1000, foreground=mask)
    assert few[mask].std() > 5 * many[mask].std()


def test_offset_gradient_makes_whole_16_bit_counts_with_the_ramp_asked_for():
    flat = np.zeros((50, 70), np.float32)
    out = offset_gradient(flat, np.random.default_rng(0), offset=500, signal=1000, gradient=0.4)
    assert out.min() == 500.0 and out.max() == 900.0
    assert np.array_equal(out, np.round(out))
    # a linear ramp: along rows and columns the steps are constant up to rounding
    assert np.ptp(np.diff(out, axis=1)) <= 1.0 and np.ptp(np.diff(out, axis=0)) <= 1.0
    smooth = offset_gradient(flat, np.random.default_rng(0), offset=500, signal=1000, gradient=0.4, smooth=True)
    assert smooth.min() == 500.0 and smooth.max() == 900.0
    assert np.ptp(np.diff(smooth, axis=1)) > 1.0  # not a plane


def test_offset_gradient_maps_the_image_range_to_signal_and_clips():
    image, _ = nuclei()
    out = offset_gradient(image, np.random.default_rng(0), offset=100, signal=400, gradient=0.0)
    assert set(np.unique(out).tolist()) == {100.0, 500.0}
    huge = offset_gradient(image, np.random.default_rng(0), offset=65000, signal=4000, gradient=0.0)
    assert huge.max() == 65535.0


def test_saturated_blobs_are_few_round_and_at_the_saturation_level():
    image, _ = nuclei(shape=(200, 200))
    out = saturated_blobs(image, np.random.default_rng(5), count=3, diameter=20, brightness=10.0)
    level = 100.0 + 10.0 * 400.0
    assert out.max() == level
    saturated, n = ndi.label(out == level)
    assert 1 <= n <= 3
    # each flat top covers about three quarters of a blob diameter of 20-40 px
    areas = np.bincount(saturated.ravel())[1:]
    assert np.all(areas > np.pi * (0.7 * 10) ** 2) and np.all(areas < np.pi * (0.8 * 20) ** 2)
    assert np.array_equal(saturated_blobs(image, np.random.default_rng(5), count=0, diameter=20), image)


def test_saturate_objects_keeps_shapes_and_the_background():
    image, mask = nuclei(background=100.0, level=150.0)
    out = saturate_objects(image, mask, np.random.default_rng(2), count=2, diameter=16, brightness=10.0)
    changed = out != image
    assert changed.any() and np.all(mask[changed])  # only object pixels change
    labels, _ = ndi.label(mask)
    touched = np.unique(labels[changed])
    assert 1 <= touched.size <= 2
    for label in touched:  # a chosen nucleus saturates whole
        assert np.all(out[labels == label] == 100.0 + 10.0 * 50.0)
    assert np.array_equal(saturate_objects(image, np.zeros_like(mask), np.random.default_rng(0), count=2, diameter=16), image)


def test_jpeg_quality_orders_the_error():
    rng = np.random.default_rng(0)
    image, _ = nuclei()
    image = gaussian_blur(image, 1.5) + rng.normal(0, 20, image.shape).astype(np.float32)
    errors = [np.abs(jpeg_artifacts(image, quality=q) - image).mean() for q in (95, 60, 10)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 0.01 * np.ptp(image)


def test_jpeg_colour_and_flat_images():
    colour = np.random.default_rng(0).uniform(0, 1, (16, 16, 3))
    assert jpeg_artifacts(colour, quality=80).shape == (16, 16, 3)
    flat = np.full((8, 8), 7.0)
    assert np.array_equal(jpeg_artifacts(flat, quality=60), flat)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda img: adjust_gamma(img, 0), "gamma"),
        (lambda img: gaussian_blur(img, -1), "sigma"),
        (lambda img: shot_noise(img, np.random.default_rng(0), photons=0), "photons"),
        (lambda img: offset_gradient(img, np.random.default_rng(0), signal=0), "signal"),
        (lambda img: saturated_blobs(img, np.random.default_rng(0), count=-1, diameter=5), "count"),
        (lambda img: saturated_blobs(img, np.random.default_rng(0), count=1, diameter=0), "diameter"),
        (lambda img: jpeg_artifacts(img, quality=0), "quality"),
        (lambda img: shot_noise(img, np.random.default_rng(0), photons=5, foreground=np.ones((3, 3), bool)), "mask"),
        (lambda img: adjust_gamma(img[None, None], 2), "image"),
        (lambda img: gaussian_blur(np.where(img > 0, np.nan, img), 1), "NaN"),
    ],
)
def test_bad_values_are_input_errors(call, message):
    image, _ = nuclei()
    with pytest.raises(InputError, match=message):
        call(image)
