"""Tests for segtool.synthetic: deterministic nuclei images with exact labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segtool.errors import InputError
from segtool.synthetic import ILLUMINATIONS, make_background, make_nuclei_image


def test_same_seed_same_arrays_other_seed_other_arrays():
    a_image, a_labels = make_nuclei_image((96, 128), seed=3)
    b_image, b_labels = make_nuclei_image((96, 128), seed=3)
    c_image, c_labels = make_nuclei_image((96, 128), seed=4)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_labels, c_labels)
    assert not np.array_equal(a_image, c_image)


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_shapes_dtypes_and_consecutive_labels(dtype):
    image, labels = make_nuclei_image((100, 140), n_nuclei=12, seed=1, dtype=dtype)
    assert image.shape == labels.shape == (100, 140)
    assert image.dtype == np.dtype(dtype)
    assert labels.dtype == np.uint16
    assert int(labels.max()) == 12
    assert np.array_equal(np.unique(labels), np.arange(13))


def test_uint16_is_rounded_float():
    image, _ = make_nuclei_image((64, 64), seed=2)
    image16, _ = make_nuclei_image((64, 64), seed=2, dtype="uint16")
    assert np.array_equal(image16, np.clip(np.rint(image), 0, 65535).astype(np.uint16))


def test_noiseless_image_is_background_plus_nuclei():
    image, labels = make_nuclei_image((80, 80), n_nuclei=5, seed=5, noise=0.0, illumination="none")
    background = make_background((80, 80), illumination="none")
    far = ndi.distance_transform_edt(labels == 0) > 5  # beyond the blur of any nucleus
    assert np.allclose(image[far], background[far], atol=1e-3)
    assert np.all(image[labels > 0] > background[labels > 0] + 50)


@pytest.mark.parametrize("illumination", ILLUMINATIONS)
def test_illumination_fields(illumination):
    background = make_background((120, 160), seed=6, illumination=illumination)
    assert background.dtype == np.float32
    low, high = float(background.min()), float(background.max())
    if illumination == "none":
        assert low == high == 400.0
    elif illumination == "gradient":
        # 100 + 300 * I with I from 0.3 to 1.
        assert low == pytest.approx(190.0, abs=1.0) and high == pytest.approx(400.0, abs=1.0)
    else:
        assert 150 < low < 250 and high == pytest.approx(400.0, abs=10.0)


def test_background_matches_image_without_nuclei():
    image, labels = make_nuclei_image((64, 64), n_nuclei=0, seed=7, noise=0.0)
    assert labels.max() == 0
    assert np.allclose(image, make_background((64, 64), seed=7), atol=1e-3)


def test_gradient_is_a_degree_2_polynomial():
    from segtool.background import fit_background

    background = make_background((90, 70), seed=8, illumination="gradient")
    fit = fit_background(background, degree=2, robust=False)
    assert np.abs(fit.evaluate() - background).max() < 1e-3


def test_touching_nuclei_touch_and_others_do_not():
    _, labels = make_nuclei_image((256, 256), n_nuclei=40, seed=9, touching=1.0)
    # Pairs of different labels that are 8-neighbours.
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :]), (labels[:-1, :-1], labels[1:, 1:])):
        touching = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(a[touching].tolist(), b[touching].tolist()))
    assert len(pairs) >= 10

    _, apart = make_nuclei_image((256, 256), n_nuclei=20, seed=9, touching=0.0)
    _, count = ndi.label(apart > 0, structure=np.ones((3, 3)))
    assert count == apart.max()


def test_noise_scales_with_strength():
    flat = {}
    for noise in (0.5, 2.0):
        image, _ = make_nuclei_image((128, 128), n_nuclei=0, seed=10, noise=noise, illumination="none")
        flat[noise] = float(image.std())
    assert flat[2.0] == pytest.approx(4 * flat[0.5], rel=0.1)


def test_radius_range_sets_nucleus_size():
    _, labels = make_nuclei_image((200, 200), n_nuclei=10, seed=11, radius_range=(5, 5), touching=0.0)
    sizes = np.bincount(labels.ravel())[1:]
    # Area pi * a * b = pi * r**2 for every aspect ratio (clipped at the border).
    assert np.median(sizes) == pytest.approx(np.pi * 25, rel=0.15)


def test_crowded_image_places_fewer_nuclei():
    _, labels = make_nuclei_image((40, 40), n_nuclei=100, seed=12, touching=0.0)
    assert 0 < labels.max() < 100
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_large_image_is_quick():
    import time

    start = time.perf_counter()
    _, labels = make_nuclei_image((1024, 1024), n_nuclei=400, seed=13)
    assert time.perf_counter() - start < 5.0
    assert labels.max() > 350


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shape": (0, 10)}, "shape"),
        ({"shape": (10,)}, "shape"),
        ({"n_nuclei": -1}, "n_nuclei"),
        ({"illumination": "sideways"}, "illumination"),
        ({"noise": -1.0}, "noise"),
        ({"radius_range": (5, 2)}, "radius_range"),
        ({"radius_range": (0, 2)}, "radius_range"),
        ({"touching": 1.5}, "touching"),
        ({"dtype": "uint8"}, "dtype"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise(options, message):
    with pytest.raises(InputError, match=message):
        make_nuclei_image(**options)


# ----------------------------------------------------------------- pieces shared with the 3-D generator


def test_renumber_present_closes_gaps_and_keeps_order():
    from segtool.synthetic import renumber_present

    labels = np.array([[0, 3, 3], [1, 0, 5]], dtype=np.uint16)
    out = renumber_present(labels, 5)
    assert out.dtype == np.uint16
    assert out.tolist() == [[0, 2, 2], [1, 0, 3]]
    full = np.array([[1, 2]], dtype=np.uint16)
    assert renumber_present(full, 2) is full


def test_paint_nucleus_gives_a_shared_pixel_to_the_nearer_centre():
    from segtool.synthetic import paint_nucleus

    labels = np.zeros((1, 3), np.uint16)
    signal = np.zeros((1, 3), np.float32)
    nearest = np.full((1, 3), np.inf, np.float32)
    box = (slice(0, 1), slice(0, 3))
    paint_nucleus(labels, signal, nearest, box, np.array([[0.0, 0.5, 2.0]], np.float32), 1, 1.0)
    paint_nucleus(labels, signal, nearest, box, np.array([[2.0, 0.2, 0.9]], np.float32), 2, 1.0)
    assert labels.tolist() == [[1, 2, 2]]
    assert signal[0, 0] == pytest.approx(400.0)  # the centre of nucleus 1: full brightness
    assert signal[0, 1] == pytest.approx(400.0 * (1 - 0.25 * 0.2))


def test_camera_image_without_noise_is_offset_plus_lit_background():
    from segtool.synthetic import camera_image

    signal = np.zeros((4, 5), np.float32)
    field = np.full((4, 5), 0.5, np.float32)
    image = camera_image(signal, field, psf_sigma=1.0, noise=0, rng=np.random.default_rng(0), dtype="uint16")
    assert image.dtype == np.uint16
    assert np.all(image == 100 + 150)


def test_image_dtype_check_quotes_the_accepted_names():
    from segtool.synthetic import check_image_dtype

    assert check_image_dtype(np.float32, ("float32", "uint16", np.float32)) == "float32"
    with pytest.raises(InputError, match=r"^dtype must be 'uint16' or 'float32', got 'int8'$"):
        check_image_dtype("int8", ("uint16", "float32"))
