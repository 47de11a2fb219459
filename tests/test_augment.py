"""Tests for patch augmentation: image and target must stay aligned."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from segtool.errors import InputError
from segtool.train.augment import AugmentOptions, augment_pair, context_margin, elastic_field

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


@pytest.mark.parametrize("shape, spacing", [((128, 128), 32), ((40, 30), 10), ((33, 77), 8), ((5, 3), 2)])
def test_elastic_field_equals_a_2d_cubic_spline_zoom_of_the_control_points(shape, spacing):
    # the reference: the same control points, up-sampled by scipy's 2-D cubic spline zoom in one call
    import math

    from scipy import ndimage as ndi

    for seed in range(5):
        grid = tuple(max(2, math.ceil(n / spacing) + 1) for n in shape)
        coarse = np.random.default_rng(seed).normal(0.0, 4.0, size=(2, *grid))
        zoom = tuple(n / g for n, g in zip(shape, grid))
        expected = np.stack(
            [ndi.zoom(c, zoom, order=3, mode="nearest", grid_mode=True)[: shape[0], : shape[1]] for c in coarse]
        ).astype(np.float32)
        field = elastic_field(shape, np.random.default_rng(seed), alpha=4.0, spacing=spacing)
        np.testing.assert_allclose(field, expected, rtol=0, atol=1e-5)
        assert np.abs(field).max() > 0.5  # a real displacement, not a zero field matching a zero reference


def test_rejects_mismatched_shapes_and_bad_options():
    with pytest.raises(InputError, match="equal H, W"):
        augment_pair(np.zeros((1, 8, 8)), np.zeros((1, 8, 9)), np.random.default_rng(0))
    with pytest.raises(InputError, match="noise_std"):
        AugmentOptions(noise_std=-1)


def test_options_roundtrip():
    options = AugmentOptions(elastic=True, noise_std=0.05)
    assert AugmentOptions.from_dict(options.to_dict()) == options


def bar_angle(mask: np.ndarray) -> float:
    """Orientation (degrees, 0-180) of a mask's principal axis, from its second moments."""
    ys, xs = np.nonzero(mask)
    ys, xs = ys - ys.mean(), xs - xs.mean()
    return float(np.degrees(0.5 * np.arctan2(2 * (xs * ys).mean(), (xs**2).mean() - (ys**2).mean())) % 180)


def centred_bar_and_disc(size: int) -> np.ndarray:
    labels = np.zeros((size, size), np.float32)
    c = size // 2
    labels[c - 3 : c + 3, c - 15 : c + 15] = 1  # a horizontal bar through the centre
    labels[disk((c, c - 25), 6)] = 2  # a disc beside it
    return labels


def test_rotation_by_any_angle_turns_the_content_and_keeps_it_aligned():
    labels = centred_bar_and_disc(96)
    options = AugmentOptions(flip=False, rotate90=False, intensity_scale=0, intensity_shift=0, noise_std=0, rotate=True)
    angles = []
    for seed in range(12):
        img, tgt = augment_pair(labels[None] * 10.0, labels[None], np.random.default_rng(seed), options=options, output_size=64)
        assert img.shape == tgt.shape == (1, 64, 64)
        assert set(np.unique(tgt)) <= {0.0, 1.0, 2.0}
        assert np.isclose(img[0], tgt[0] * 10.0, atol=5.0).mean() > 0.97
        bar = tgt[0] == 1
        assert abs(bar.sum() / (labels == 1).sum() - 1) < 0.15  # rotation keeps area
        angles.append(bar_angle(bar))
    # angles off the four axis directions occur (not only multiples of 90 degrees)
    off_axis = [a for a in angles if min(a % 90, 90 - a % 90) > 10]
    assert len(off_axis) >= 4


def test_zoom_scales_object_areas_within_the_range():
    labels = centred_bar_and_disc(96)
    options = AugmentOptions(flip=False, rotate90=False, intensity_scale=0, intensity_shift=0, noise_std=0, zoom=0.5)
    ratios = []
    for seed in range(16):
        _, tgt = augment_pair(labels[None], labels[None], np.random.default_rng(seed), options=options, output_size=48)
        ratios.append((tgt[0] == 1).sum() / (labels == 1).sum())
    # a linear zoom by z changes areas by z**2, z in [1/1.5, 1.5]
    assert min(ratios) >= (1 / 1.5) ** 2 * 0.85 and max(ratios) <= 1.5**2 * 1.15
    assert min(ratios) < 0.85 and max(ratios) > 1.15  # both shrinking and growing occur


def test_rotated_output_reads_context_from_around_the_window():
    # discs just outside the middle of each edge of the central window: the centre crop misses them,
    # a turn by about 45 degrees brings the window's corners over them (real context, not mirrored patch)
    size, out = 128, 64
    marks = np.zeros((size, size), np.float32)
    c = size // 2
    for dy, dx in ((38, 0), (-38, 0), (0, 38), (0, -38)):
        marks[disk((c + dy, c + dx), 4)] = 1
    plain = AugmentOptions(flip=False, rotate90=False, intensity_scale=0, intensity_shift=0, noise_std=0)
    crop, _ = augment_pair(marks[None], marks[None], np.random.default_rng(0), options=plain, output_size=out)
    assert crop.shape == (1, out, out) and crop.max() == 0
    rotated = AugmentOptions(flip=False, rotate90=False, intensity_scale=0, intensity_shift=0, noise_std=0, rotate=True)
    touched = [augment_pair(marks[None], marks[None], np.random.default_rng(s), options=rotated, output_size=out)[1].max() for s in range(12)]
    assert max(touched) == 1.0


def test_context_margin_covers_the_warp():
    assert context_margin(128, AugmentOptions(elastic=True)) == 0  # elastic alone keeps its old behaviour
    rotate = context_margin(128, AugmentOptions(rotate=True))
    assert 64 * np.sqrt(2) - 64 <= rotate < 64 * np.sqrt(2) - 64 + 1
    zoom = context_margin(128, AugmentOptions(zoom=0.25))
    assert zoom == 16
    assert context_margin(128, AugmentOptions(rotate=True, zoom=0.25, elastic=True)) > context_margin(128, AugmentOptions(rotate=True, zoom=0.25))


def test_output_size_must_fit_the_input():
    with pytest.raises(InputError, match="output_size"):
        augment_pair(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), np.random.default_rng(0), output_size=9)
    with pytest.raises(InputError, match="zoom"):
        AugmentOptions(zoom=-0.1)


# --- appearance changes of other microscopes (off unless appearance > 0) ---

ONLY = dict(flip=False, rotate90=False, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0,
            gamma=0.0, blur=0.0, photons=0.0, gradient=0.0, blobs=0, jpeg=0)


def nuclei_patch(size=64):
    labels = np.zeros((size, size), np.float32)
    labels[disk((16, 16), 8)] = 1
    labels[disk((40, 44), 10)] = 1
    shade = np.linspace(0.5, 0.8, size, dtype=np.float32)  # objects brighter to the right: mid-tones for gamma
    image = (labels * shade + 0.05)[None]  # a normalised patch: background near 0, objects near 1
    return image.astype(np.float32), labels[None]


def test_appearance_off_draws_nothing_and_changes_nothing():
    image, target = nuclei_patch()
    plain = augment_pair(image, target, np.random.default_rng(4), options=AugmentOptions(elastic=True))
    rng = np.random.default_rng(4)
    ranged = augment_pair(image, target, rng, options=AugmentOptions(elastic=True, gamma=3.0, blur=5.0, jpeg=10))
    assert np.array_equal(plain[0], ranged[0]) and np.array_equal(plain[1], ranged[1])
    after = np.random.default_rng(4)
    augment_pair(image, target, after, options=AugmentOptions(elastic=True))
    assert rng.random() == after.random()  # the same number of draws


def test_appearance_changes_the_image_only_and_is_seeded():
    image, target = nuclei_patch()
    before = image.copy()
    off = augment_pair(image, target, np.random.default_rng(7), options=AugmentOptions(elastic=True))
    on = augment_pair(image, target, np.random.default_rng(7), options=AugmentOptions.microscopes(1.0, elastic=True))
    again = augment_pair(image, target, np.random.default_rng(7), options=AugmentOptions.microscopes(1.0, elastic=True))
    assert np.array_equal(on[1], off[1])  # the geometry (drawn first) is the same
    assert not np.allclose(on[0], off[0], atol=0.05)
    assert np.array_equal(on[0], again[0]) and np.array_equal(image, before)
    assert on[0].dtype == np.float32 and on[0].flags.c_contiguous and np.all(np.isfinite(on[0]))


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"gamma": 1.0}, lambda out, img: out.max() == pytest.approx(img.max()) and not np.allclose(out, img)),
        ({"blur": 3.0}, lambda out, img: np.abs(out - img).max() > 0.1 and out.sum() == pytest.approx(img.sum(), rel=0.01)),
        ({"photons": 5.0}, lambda out, img: 0.01 < np.abs(out - img)[img > 0.3].mean() < 0.4),
        ({"jpeg": 10}, lambda out, img: 0 < np.abs(out - img).mean() < 0.1),
        ({"gradient": 1.0}, lambda out, img: np.ptp(out[img < 0.5]) > 0.01),
    ],
)
def test_each_appearance_change_alone(change, check):
    image, target = nuclei_patch()
    options = AugmentOptions(**{**ONLY, **change, "appearance": 1.0})
    hits = 0
    for seed in range(6):
        out, tgt = augment_pair(image, target, np.random.default_rng(seed), options=options)
        assert np.array_equal(tgt, target)
        hits += bool(check(out[0], image[0]))
    assert hits >= 5  # a drawn strength near 0 may leave one patch almost as it was


def test_saturated_objects_keep_their_shape_and_the_background():
    image, target = nuclei_patch()
    options = AugmentOptions(**{**ONLY, "blobs": 2, "appearance": 1.0})
    for seed in range(5):
        out, _ = augment_pair(image, target, np.random.default_rng(seed), options=options)
        changed = out[0] != image[0]
        assert changed.any() and np.all(target[0][changed] == 1)
        assert out[0].max() > 0.05 + 3 * 0.5  # saturated at 3-10 times the contrast


def test_appearance_on_several_channels():
    image, target = nuclei_patch()
    for channels in (2, 3):
        stack = np.repeat(image, channels, axis=0)
        out, _ = augment_pair(stack, target, np.random.default_rng(0), options=AugmentOptions.microscopes(1.0))
        assert out.shape == stack.shape and np.all(np.isfinite(out))


def test_appearance_options_validate_and_roundtrip():
    options = AugmentOptions.microscopes(0.3, zoom=1.0)
    assert AugmentOptions.from_dict(options.to_dict()) == options
    old = {k: v for k, v in AugmentOptions().to_dict().items() if k not in ("appearance", "gamma", "jpeg")}
    assert AugmentOptions.from_dict(old).appearance == 0.0  # models saved before the option
    for bad, message in [({"appearance": 1.5}, "probability"), ({"jpeg": 100}, "jpeg"), ({"blobs": -1}, "blobs"),
                         ({"blur": -1.0}, "blur"), ({"photons": float("nan")}, "photons")]:
        with pytest.raises(InputError, match=message):
            AugmentOptions(**bad)
