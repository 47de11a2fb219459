"""Tests for segtool.baseline: polynomial background fit and threshold segmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.filters import threshold_otsu

from segtool import background, baseline
from segtool.background import BackgroundFit, fit_background, subtract_background
from segtool.baseline import BaselineResult, segment_baseline
from segtool.errors import InputError
from segtool.synthetic import make_background, make_nuclei_image

DTYPES = [np.uint8, np.uint16, np.int16, np.uint32, np.float32, np.float64]


def normalised_grid(shape):
    """Pixel coordinates mapped to [-1, 1], as the fit does."""
    y = np.linspace(-1.0, 1.0, shape[0])[:, None]
    x = np.linspace(-1.0, 1.0, shape[1])[None, :]
    return y, x


def random_polynomial(shape, degree, rng):
    """A polynomial image of total degree ``degree`` with random monomial coefficients."""
    y, x = normalised_grid(shape)
    image = np.zeros(shape)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            image = image + rng.uniform(-1, 1) * (10.0 / (i + j + 1)) * y**i * x**j
    return image + 50.0


def naive_fit(image, degree, weights=None):
    """Least squares with the full pixels x monomials design matrix."""
    y, x = normalised_grid(image.shape)
    yy, xx = np.broadcast_arrays(y, x)
    columns = [(yy**i * xx**j).ravel() for i in range(degree + 1) for j in range(degree + 1 - i)]
    design = np.stack(columns, axis=1)
    w = np.ones(image.size) if weights is None else weights.ravel().astype(float)
    coef, *_ = np.linalg.lstsq(design * w[:, None], image.ravel() * w, rcond=None)
    return (design @ coef).reshape(image.shape)


def two_squares(dtype=np.uint8):
    image = np.full((40, 50), 10, dtype=dtype)
    image[5:15, 5:15] = 60
    image[20:35, 25:45] = 60
    return image


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize("degree", range(7))
@pytest.mark.parametrize("robust", [False, True])
def test_fit_recovers_polynomial_exactly(degree, robust, rng):
    image = random_polynomial((61, 83), degree, rng)
    fit = fit_background(image, degree=degree, robust=robust)
    scale = np.abs(image).max()
    assert np.abs(fit.evaluate() - image).max() <= 1e-4 * scale


@pytest.mark.parametrize("degree", [8, 10])
def test_high_degree_fit_is_well_conditioned(degree, rng):
    image = random_polynomial((97, 89), degree, rng)
    fit = fit_background(image, degree=degree, robust=False)
    assert np.abs(fit.evaluate() - image).max() <= 1e-4 * np.abs(image).max()


def test_fit_on_subsample_grid_still_exact(rng):
    # 700 x 600 > 2**16 pixels: fitted on every 3rd row and column.
    image = random_polynomial((700, 600), 3, rng).astype(np.float32)
    fit = fit_background(image, degree=3)
    assert fit.step == (3, 3)
    assert fit.fit_pixels < image.size
    assert np.abs(fit.evaluate() - image).max() <= 1e-4 * np.abs(image).max()


@pytest.mark.parametrize("degree", [0, 1, 2, 4])
def test_separable_fit_equals_full_design_matrix(degree, rng):
    image = rng.normal(100, 10, size=(23, 31))
    fast = fit_background(image, degree=degree, robust=False).evaluate()
    assert np.allclose(fast, naive_fit(image, degree), rtol=0, atol=1e-4)


def test_separable_weighted_fit_equals_full_design_matrix(rng):
    image = rng.normal(100, 10, size=(23, 31))
    mask = rng.random(image.shape) > 0.4
    fast = fit_background(image, degree=3, robust=False, mask=mask).evaluate()
    assert np.allclose(fast, naive_fit(image, 3, weights=mask), rtol=0, atol=1e-4)


def test_robust_fit_beats_naive_fit_with_bright_nuclei():
    shape = (256, 256)
    image, labels = make_nuclei_image(shape, n_nuclei=60, seed=2, illumination="gradient")
    truth = make_background(shape, seed=2, illumination="gradient")
    assert (labels > 0).mean() > 0.2  # plenty of bright area to lift a plain fit
    errors = {}
    for robust in (True, False):
        fitted = fit_background(image, degree=2, robust=robust).evaluate()
        errors[robust] = float(np.sqrt(np.mean((fitted - truth) ** 2)))
    # Measured: robust ~1.1 counts, plain ~69 counts (noise sd ~20 counts).
    assert errors[True] < 3.0
    assert errors[True] < 0.05 * errors[False]


def test_robust_fit_dark_objects_mirror_bright_ones():
    image, _ = make_nuclei_image((128, 128), n_nuclei=20, seed=4)
    bright = fit_background(image, polarity="bright").evaluate()
    dark = fit_background(-image, polarity="dark").evaluate()
    assert np.allclose(bright, -dark, atol=1e-3)


def test_mask_limits_fit_to_selected_pixels():
    image = np.zeros((30, 30))
    image[:, 15:] = 100.0
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :15] = True
    fit = fit_background(image, degree=0, robust=False, mask=mask)
    assert np.allclose(fit.evaluate(), 0.0)
    assert fit.used_pixels == mask.sum()


def test_background_fit_fields_and_summary():
    image = np.add.outer(np.arange(20.0), 2 * np.arange(30.0))
    fit = fit_background(image, degree=1)
    assert isinstance(fit, BackgroundFit)
    assert fit.degree == 1 and fit.shape == (20, 30)
    assert fit.coefficients.shape == (2, 2)
    assert fit.coefficients[1, 1] == 0.0  # i + j > degree
    summary = fit.summary()
    json.dumps(summary)
    assert summary["min"] == pytest.approx(0.0, abs=1e-6)
    assert summary["max"] == pytest.approx(19.0 + 58.0)
    assert summary["range"] == pytest.approx(77.0)
    assert summary["mean"] == pytest.approx(image.mean())
    assert [len(row) for row in summary["coefficients"]] == [2, 1]


def test_evaluate_on_other_shape_stretches_background():
    image = np.add.outer(np.linspace(0, 1, 40), np.zeros(60))
    fit = fit_background(image, degree=1)
    small = fit.evaluate((5, 3))
    assert small.dtype == np.float32 and small.shape == (5, 3)
    assert np.allclose(small[:, 0], np.linspace(0, 1, 5), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subtract_background_dtypes(dtype):
    ramp = np.add.outer(np.arange(0, 40, 2), np.arange(0, 60, 2)).astype(dtype)
    corrected = subtract_background(ramp, degree=1)
    assert corrected.dtype == np.float32
    assert np.abs(corrected).max() < 1e-3


# ----------------------------------------------------------------------- segment


def test_otsu_on_bimodal_image_is_exact():
    image = two_squares()
    result = segment_baseline(image, degree=0, min_size=1)
    assert isinstance(result, BaselineResult)
    assert result.threshold == pytest.approx(threshold_otsu(result.corrected))
    assert 0 < result.threshold < 50
    assert result.labels.max() == 2
    assert np.array_equal(result.labels > 0, image > 10)
    assert np.allclose(result.background, 10.0)
    assert np.allclose(result.corrected + result.background, image)


@pytest.mark.parametrize("method", ["li", "triangle", "yen", "OTSU"])
def test_other_threshold_methods_find_the_squares(method):
    result = segment_baseline(two_squares(), degree=0, min_size=1, threshold=method)
    assert result.labels.max() == 2


def test_numeric_threshold_in_corrected_units():
    image = two_squares().astype(np.float32)
    image[5:15, 5:15] = 30  # 20 above the background
    assert segment_baseline(image, degree=0, threshold=25.0, min_size=1).labels.max() == 1
    result = segment_baseline(image, degree=0, threshold=10, min_size=1)
    assert result.labels.max() == 2 and result.threshold == 10.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_segmentation_same_for_every_dtype_and_input_untouched(dtype):
    image, _ = make_nuclei_image((96, 96), n_nuclei=8, seed=5, noise=0.5, touching=0.0)
    scaled = (image - image.min()) * (200.0 / (image.max() - image.min()))  # fits uint8 and int16
    typed = np.round(scaled).astype(dtype)
    before = typed.copy()
    result = segment_baseline(typed)
    assert np.array_equal(typed, before)
    reference = segment_baseline(np.round(scaled).astype(np.float64))
    assert np.array_equal(result.labels, reference.labels)
    assert result.labels.dtype == np.uint16
    assert result.background.dtype == np.float32 and result.corrected.dtype == np.float32
    assert result.labels.max() >= 6


def test_labels_are_consecutive(rng):
    image, _ = make_nuclei_image((128, 128), n_nuclei=25, seed=6)
    labels = segment_baseline(image, min_size=30).labels
    present = np.unique(labels)
    assert np.array_equal(present, np.arange(labels.max() + 1))


def test_polarity_auto_bright_and_dark():
    image, _ = make_nuclei_image((128, 128), n_nuclei=15, seed=7)
    bright = segment_baseline(image, polarity="bright")
    auto = segment_baseline(image, polarity="auto")
    assert auto.polarity == "bright"
    assert np.array_equal(auto.labels, bright.labels)

    dark_image = 2000.0 - image  # dark nuclei on a bright background
    dark = segment_baseline(dark_image, polarity="dark")
    auto_dark = segment_baseline(dark_image, polarity="auto")
    assert auto_dark.polarity == "dark"
    assert np.array_equal(auto_dark.labels, dark.labels)
    # Objects below the threshold, and the same objects as the bright image.
    assert dark.corrected[dark.labels > 0].max() < dark.threshold
    assert dark.labels.max() == bright.labels.max()
    assert ((dark.labels > 0) == (bright.labels > 0)).mean() > 0.999


def test_bright_polarity_on_dark_objects_does_not_find_them():
    image = 100.0 - two_squares(np.float64)
    assert segment_baseline(image, degree=0, polarity="dark", min_size=1).labels.max() == 2


def two_touching_disks():
    image = np.zeros((60, 80), dtype=np.float32)
    image[disk((30, 28), 13)] = 100
    image[disk((30, 51), 13)] = 100  # centres 23 px apart: a narrow waist
    return image


def test_split_separates_touching_disks():
    image = two_touching_disks()
    assert segment_baseline(image, degree=0).labels.max() == 1
    split = segment_baseline(image, degree=0, split=True).labels
    assert split.max() == 2
    sizes = np.bincount(split.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 0.05 * sizes.sum()
    assert np.array_equal(split > 0, image > 0)


def test_split_keeps_a_nucleus_with_a_hole_whole():
    image = np.zeros((60, 60), dtype=np.float32)
    image[disk((30, 30), 18)] = 100
    image[disk((30, 26), 4)] = 0  # dark nucleolus off-centre
    result = segment_baseline(image, degree=0, split=True)
    assert result.labels.max() == 1


def test_min_size_removes_specks():
    image = np.zeros((40, 40), dtype=np.uint8)
    image[10:20, 10:20] = 200  # 100 px
    image[30, 30] = 200  # 1 px
    image[2:4, 30:32] = 200  # 4 px
    image[35:38, 2:5] = 200  # 9 px
    assert segment_baseline(image, degree=0, min_size=1).labels.max() == 4
    assert segment_baseline(image, degree=0, min_size=5).labels.max() == 2
    kept = segment_baseline(image, degree=0, min_size=10).labels
    assert kept.max() == 1 and (kept > 0).sum() == 100


def ring(outer=15, inner=7):
    image = np.zeros((50, 50), dtype=np.float32)
    image[disk((25, 25), outer)] = 100
    image[disk((25, 25), inner)] = 0
    return image


def test_fill_holes_fills_a_ring():
    image = ring()
    plain = segment_baseline(image, degree=0)
    filled = segment_baseline(image, degree=0, fill_holes=True)
    assert plain.labels.max() == filled.labels.max() == 1
    assert (filled.labels > 0).sum() == (disk_mask(image.shape, 15)).sum()
    assert (plain.labels > 0).sum() == (image > 0).sum()


def disk_mask(shape, radius):
    mask = np.zeros(shape, dtype=bool)
    mask[disk((25, 25), radius)] = True
    return mask


def test_fill_holes_leaves_hole_with_an_island_open():
    image = ring(outer=20, inner=12)
    image[disk((25, 25), 4)] = 100  # a separate object inside the hole
    result = segment_baseline(image, degree=0, fill_holes=True, min_size=1)
    assert result.labels.max() == 2
    assert (result.labels > 0).sum() == (image > 0).sum()


def test_more_than_65535_objects_gives_uint32():
    # Isolated single bright pixels on a 2-pixel grid: 300 * 300 = 90000 objects.
    image = np.zeros((600, 600), dtype=np.uint8)
    image[::2, ::2] = 100
    result = segment_baseline(image, degree=0, min_size=1)
    assert result.labels.dtype == np.uint32
    assert int(result.labels.max()) == 90000
    assert segment_baseline(image[:200], degree=0, min_size=1).labels.dtype == np.uint16


def test_large_image_uses_subsample_threshold_and_matches_full(rng):
    # 1100 x 1000 > 2**18 pixels: the threshold comes from a subsample, and the
    # object mask is made in the same pass as the subtraction.
    image, _ = make_nuclei_image((1100, 1000), n_nuclei=300, seed=8, noise=0.5)
    result = segment_baseline(image)
    full = threshold_otsu(result.corrected)
    assert abs(result.threshold - full) < 0.02 * (result.corrected.max() - result.corrected.min())
    # Same objects as thresholding the full corrected image with that level.
    expected, _ = ndi.label(result.corrected > result.threshold, structure=np.ones((3, 3)))
    sizes = np.bincount(expected.ravel())
    assert np.array_equal(result.labels > 0, (sizes >= 20)[expected] & (expected > 0))
    assert result.labels.max() > 200


def test_nan_outside_fitting_grid_is_found(rng):
    image = rng.normal(100, 5, size=(1100, 1000)).astype(np.float32)
    image[1, 1] = np.nan  # not on the fitting or threshold grid
    with pytest.raises(InputError, match="NaN"):
        segment_baseline(image)


def test_constant_image_gives_no_objects():
    result = segment_baseline(np.full((20, 20), 7, dtype=np.uint8))
    assert result.labels.shape == (20, 20) and result.labels.dtype == np.uint16 and not result.labels.any()
    assert result.threshold is None and result.empty_reason == "image is constant"
    assert np.allclose(result.background, 7)


@pytest.mark.parametrize("degree", [1, 2])
def test_pure_smooth_background_gives_no_objects(degree):
    yy, xx = np.mgrid[:30, :40].astype(np.float64)
    surface = 10 + 0.5 * yy + 0.2 * xx + (0.01 * yy * xx if degree == 2 else 0)
    result = segment_baseline(surface, degree=degree)
    assert not result.labels.any() and result.empty_reason == "image is only smooth background"
    assert np.allclose(result.background, surface, atol=1e-3)


@pytest.mark.parametrize("threshold", ["otsu", "li", "triangle", "yen"])
@pytest.mark.parametrize("noise", ["gauss", "poisson"])
def test_noise_on_smooth_background_gives_no_objects(threshold, noise):
    # Otsu alone splits this image into dozens of noise blobs over min_size without the rule.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :320] / 256
    surface = 100 + 30 * yy + 20 * xx**2
    image = rng.normal(surface, 5) if noise == "gauss" else rng.poisson(surface / 50).astype(np.uint16)
    result = segment_baseline(image, threshold=threshold)
    assert not result.labels.any()
    if noise == "gauss" or threshold == "otsu":
        # The rule itself fired (on a few grey levels of Poisson noise the neighbour-difference
        # MAD underestimates the noise, and min_size removes the specks Yen/Triangle/Li leave).
        assert result.empty_reason is not None and "noise" in result.empty_reason
        assert result.threshold is not None


def test_noise_rule_keeps_faint_objects(rng):
    # Disks 4 noise sigmas above the background: the classes differ by about 4 sigma > 3.
    from skimage.draw import disk

    image = rng.normal(100, 5, size=(200, 200))
    for center in [(40, 40), (120, 60), (80, 150), (160, 160)]:
        image[disk(center, 9)] += 20
    result = segment_baseline(image, min_size=20, smooth=1.0)
    assert result.empty_reason is None and result.labels.max() == 4


def test_numeric_threshold_is_applied_to_noise(rng):
    image = rng.normal(100, 5, size=(64, 64))
    result = segment_baseline(image, degree=0, threshold=0.0, min_size=1)
    assert result.empty_reason is None and result.labels.max() > 0


def test_caller_array_not_modified_with_all_options():
    image = ring().astype(np.float64) + np.add.outer(np.arange(50.0), np.arange(50.0))
    before = image.copy()
    segment_baseline(image, fill_holes=True, split=True, smooth=1.0, polarity="auto")
    assert np.array_equal(image, before)


def test_smooth_removes_single_pixel_noise(rng):
    image = np.zeros((64, 64), dtype=np.float32)
    image[disk((32, 32), 12)] = 50
    noisy = image + rng.normal(0, 12, size=image.shape).astype(np.float32)
    rough = segment_baseline(noisy, degree=0, min_size=1).labels.max()
    smooth = segment_baseline(noisy, degree=0, min_size=1, smooth=2.0).labels.max()
    assert smooth == 1 < rough


def test_segments_synthetic_uneven_illumination_well():
    from segtool.metrics import match_labels

    image, truth = make_nuclei_image((256, 256), n_nuclei=30, seed=9, touching=0.0, illumination="vignette")
    counts = match_labels(truth, segment_baseline(image, degree=4).labels, thresholds=(0.5,))
    assert counts.f1[0] > 0.9


# -------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros(5), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.array([[1 + 1j, 0], [0, 0]]), "real numbers"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_bad_images_raise(image, message):
    for call in (fit_background, subtract_background, segment_baseline):
        with pytest.raises(InputError, match=message):
            call(image)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"degree": -1}, "degree"),
        ({"degree": 1.5}, "degree"),
        ({"degree": True}, "degree"),
        ({"degree": 21}, "degree"),
        ({"threshold": "median"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"polarity": "up"}, "polarity"),
        ({"min_size": -1}, "min_size"),
        ({"smooth": -0.5}, "smooth"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(InputError, match=message):
        segment_baseline(two_squares(), **options)


def test_bad_mask_raises():
    with pytest.raises(InputError, match="mask shape"):
        fit_background(two_squares(), mask=np.ones((3, 3), dtype=bool))
    with pytest.raises(InputError, match="no pixel"):
        fit_background(two_squares(), mask=np.zeros((40, 50), dtype=bool))


def test_public_names():
    # Each name has one home: the fit in segtool.background, the segmentation in segtool.baseline.
    assert set(baseline.__all__) >= {"segment_baseline", "BaselineResult"}
    assert set(background.__all__) >= {"fit_background", "subtract_background", "BackgroundFit", "POLARITIES"}
    assert not {"fit_background", "subtract_background", "BackgroundFit"} & set(baseline.__all__)
    assert all(hasattr(baseline, name) for name in baseline.__all__)
    assert all(hasattr(background, name) for name in background.__all__)


def test_baseline_options_keep_the_fixed_size_for_stacks_and_blocks():
    from segtool.tasks.baseline import BaselineOptions

    options = BaselineOptions(degree=1, split=True, diameter=40.0)
    assert options.keywords() == {"degree": 1, "robust": True, "polarity": "bright", "threshold": "otsu",
                                  "min_size": None, "fill_holes": False, "smooth": 0.0, "split": True,
                                  "diameter": 40.0}
    fixed = options.fixed_size()
    assert fixed["min_size"] == 20 and "diameter" not in fixed and fixed["split"] is True
    assert BaselineOptions(min_size=7).fixed_size()["min_size"] == 7
