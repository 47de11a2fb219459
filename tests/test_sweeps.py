"""The plumbing of the sweep benchmarks (bench/_sweep.py, bench/sweep_scale.py): what they transform and run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _sweep import REFERENCE, Condition, median_diameter, prepare, resize_image, resize_labels, scale_condition  # noqa: E402
from sweep_scale import FACTORS, parse_factors, scale_conditions  # noqa: E402


def random_labels(rng, shape=(60, 80), n=12):
    """Labels 1..n as rectangles drawn in order (later ones on top), so some ids may be partly covered."""
    labels = np.zeros(shape, np.uint16)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        labels[y : y + rng.integers(4, 9), x : x + rng.integers(4, 9)] = k
    return labels


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0, 5.0])
def test_enlarged_labels_keep_every_id_and_only_those(factor):
    labels = random_labels(np.random.default_rng(1))
    big = resize_labels(labels, (round(60 * factor), round(80 * factor)))
    assert big.dtype == labels.dtype
    assert set(np.unique(big)) == set(np.unique(labels))


def test_labels_enlarged_by_an_integer_factor_are_pixel_blocks():
    labels = random_labels(np.random.default_rng(2))
    assert np.array_equal(resize_labels(labels, (180, 240)), labels.repeat(3, axis=0).repeat(3, axis=1))


@pytest.mark.parametrize("factor", [0.4, 0.5, 0.75])
def test_shrunk_labels_invent_no_id_and_keep_area_in_proportion(factor):
    labels = random_labels(np.random.default_rng(3), shape=(200, 240), n=20)
    small = resize_labels(labels, (round(200 * factor), round(240 * factor)))
    assert set(np.unique(small)) <= set(np.unique(labels))
    # nearest neighbour samples the grid evenly: the foreground share stays within a few per cent
    assert abs((small > 0).mean() - (labels > 0).mean()) < 0.03


def test_resized_image_keeps_dtype_channels_and_mean():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    for shape in ((20, 25), (100, 125)):
        out = resize_image(rgb, shape)
        assert out.shape == (*shape, 3) and out.dtype == np.uint8
        assert abs(out.astype(float).mean() - rgb.astype(float).mean()) < 3


def test_shrinking_averages_instead_of_picking_pixels():
    # a one-pixel checkerboard shrunk by 2 must come out grey (low-pass first), not black or white
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 200).astype(np.uint8)
    out = resize_image(board, (32, 32))
    assert 80 < out[4:-4, 4:-4].min() and out[4:-4, 4:-4].max() < 120


def test_scale_condition_resizes_image_and_labels_alike():
    labels = random_labels(np.random.default_rng(5), shape=(51, 77))
    image = (labels > 0).astype(np.uint8) * 100
    big_image, big_labels = scale_condition(2.0).transform(image, labels, np.random.default_rng(0))
    assert big_image.shape == big_labels.shape == (102, 154)
    # the object pixels of the enlarged image are where the enlarged labels are
    assert ((big_image > 50) == (big_labels > 0)).mean() > 0.97


def test_the_scale_sweep_runs_the_issues_factors_after_the_untouched_split():
    names = [c.name for c in scale_conditions()]
    assert names == [REFERENCE] + [f"scale {f:g}" for f in (0.4, 0.5, 0.75, 1.5, 2, 3, 4, 5)]
    assert FACTORS == (0.4, 0.5, 0.75, 1.5, 2.0, 3.0, 4.0, 5.0)
    assert [c.name for c in scale_conditions(parse_factors("2,1,0.5"))] == [REFERENCE, "scale 2", "scale 0.5"]
    with pytest.raises(SystemExit, match="positive"):
        parse_factors("0.5,-2")


def test_median_diameter_of_squares():
    labels = np.zeros((50, 50), np.uint16)
    labels[0:10, 0:10], labels[20:30, 20:30], labels[40:44, 40:44] = 1, 2, 3  # areas 100, 100, 16
    assert median_diameter([labels]) == pytest.approx(np.sqrt(400 / np.pi))


def _split(tmp_path, n=2):
    rng = np.random.default_rng(6)
    for kind in ("images", "masks"):
        (tmp_path / "split" / kind).mkdir(parents=True)
    for k in range(n):
        labels = random_labels(rng)
        tifffile.imwrite(tmp_path / "split" / "masks" / f"im{k}.tif", labels)
        tifffile.imwrite(tmp_path / "split" / "images" / f"im{k}.tif", (labels > 0).astype(np.uint8) * 90)
    return tmp_path / "split"


def test_prepared_files_are_reused_and_rebuilt_when_the_condition_changes(tmp_path):
    data, cache = _split(tmp_path), tmp_path / "cache"
    calls = []

    def count(value):
        def transform(image, labels, rng):
            calls.append(value)
            return image + value, labels

        return transform

    folder = prepare(Condition("shift", count(1), {"v": 1}), data, ["im0.tif", "im1.tif"], cache)
    assert len(calls) == 2 and sorted(p.name for p in (folder / "images").iterdir()) == ["im0.tif", "im1.tif"]
    prepare(Condition("shift", count(1), {"v": 1}), data, ["im0.tif", "im1.tif"], cache)
    assert len(calls) == 2  # cached
    prepare(Condition("shift", count(5), {"v": 5}), data, ["im0.tif", "im1.tif"], cache)
    assert calls == [1, 1, 5, 5]  # other values: made again
    expected = tifffile.imread(data / "images" / "im0.tif") + 5
    assert np.array_equal(tifffile.imread(folder / "images" / "im0.tif"), expected)
    assert prepare(Condition(REFERENCE, count(9)), data, ["im0.tif"], cache) == data  # the untouched split is read in place


def test_random_transforms_draw_the_same_pixels_on_every_rerun(tmp_path):
    data = _split(tmp_path, n=1)

    def noise(image, labels, rng):
        return rng.integers(0, 255, image.shape).astype(np.uint8), labels

    first = tifffile.imread(prepare(Condition("noise", noise), data, ["im0.tif"], tmp_path / "a") / "images" / "im0.tif")
    again = tifffile.imread(prepare(Condition("noise", noise), data, ["im0.tif"], tmp_path / "b") / "images" / "im0.tif")
    assert np.array_equal(first, again)


def test_the_appearance_sweep_runs_the_issues_conditions_after_the_untouched_split():
    from sweep_appearance import appearance_conditions

    names = [c.name for c in appearance_conditions()]
    assert names == [REFERENCE, "gamma 0.5", "gamma 2", "blur 2", "poisson 20", "16-bit offset+gradient",
                     "3 saturated blobs", "jpeg 60"]


def _nuclei_field(dark=False):
    from skimage.draw import disk

    labels = np.zeros((120, 120), np.uint16)
    for k, (y, x) in enumerate([(20, 20), (20, 90), (60, 55), (95, 25), (95, 95)], start=1):
        labels[disk((y, x), 8, shape=labels.shape)] = k
    ramp = np.add.outer(np.arange(120), np.arange(120)) / 12.0  # mid-tones, so a display curve changes them
    image = (np.where(labels > 0, 60, 10) + ramp).astype(np.uint8)
    return (255 - image if dark else image), labels


def test_every_appearance_condition_keeps_shape_and_masks_and_changes_the_pixels():
    from sweep_appearance import appearance_conditions

    image, labels = _nuclei_field()
    for condition in appearance_conditions()[1:]:
        out, out_labels = condition.transform(image, labels, np.random.default_rng(0))
        assert out.shape == image.shape, condition.name
        assert out.dtype == (np.uint16 if condition.name.startswith("16-bit") else np.uint8), condition.name
        assert not np.array_equal(out, image), condition.name
        if "blobs" not in condition.name:
            assert out_labels is labels, condition.name


def test_saturated_blobs_become_true_objects_in_fluorescence_only():
    from sweep_appearance import appearance_conditions

    blobs = {c.name: c for c in appearance_conditions()}["3 saturated blobs"]
    image, labels = _nuclei_field()
    out, out_labels = blobs.transform(image, labels, np.random.default_rng(3))
    kept = len(np.unique(labels[(out_labels > 0) & (out_labels == labels)]))  # old objects still there
    added = int(out_labels.max()) - kept
    assert 1 <= added <= 3  # three blobs, some may touch and merge
    assert (out[out_labels > kept] == out.max()).all()  # the new objects are saturated pixels
    assert (out == out.max()).sum() == (out_labels > kept).sum()  # and all of them
    dark, dark_labels = _nuclei_field(dark=True)
    _, same = blobs.transform(dark, dark_labels, np.random.default_rng(3))
    assert same is dark_labels  # stained tissue: a saturated patch is glare, not a nucleus


def test_the_size_predict_reports_per_image_is_summarised_wherever_it_sits():
    from _sweep import median_reported

    records = [{"scale": 0.5}, {"figures": {"scale": 1.0, "diameter": 30}}, {"scale": 2.0, "diameter": None}]
    assert median_reported(records) == {"scale": 1.0, "diameter": 30.0}
    assert median_reported([{"objects": 3}]) == {}


@pytest.mark.parametrize("dark", [False, True])
def test_saturated_blobs_leave_the_image_away_from_them_as_it_was(dark):
    from sweep_appearance import appearance_conditions

    blobs = {c.name: c for c in appearance_conditions()}["3 saturated blobs"]
    image, labels = _nuclei_field(dark=dark)
    out, _ = blobs.transform(image, labels, np.random.default_rng(3))
    changed = out != image
    assert changed.any()
    # every changed pixel lies within a blob's reach (about 1.7 nucleus diameters, 16 px here) of a saturated one
    from scipy import ndimage as ndi

    distance = ndi.distance_transform_edt(out != out.max())
    assert distance[changed].max() < 2 * 16
    assert changed.mean() < 0.5


def test_scores_sum_counts_over_images_and_count_a_failed_image_as_all_missed(tmp_path):
    from _sweep import score

    data = _split(tmp_path, n=2)
    truth0 = tifffile.imread(data / "masks" / "im0.tif")
    tifffile.imwrite(tmp_path / "im0_labels.tif", truth0)  # a perfect prediction of the first image
    records = [{"input": str(data / "images" / "im0.tif"), "status": "done", "scale": 0.5,
                "outputs": {"labels": str(tmp_path / "im0_labels.tif")}},
               {"input": str(data / "images" / "im1.tif"), "status": "failed", "error": "too big"}]
    n_true, n_pred, ap, _, failed, per_image = score(data, ["im0.tif", "im1.tif"], records)
    n0 = len(np.unique(truth0)) - 1
    n1 = len(np.unique(tifffile.imread(data / "masks" / "im1.tif"))) - 1
    assert (n_true, n_pred, failed) == (n0 + n1, n0, 1)
    assert ap["0.5"] == pytest.approx(n0 / (n0 + n1))  # TP / (TP + FP + FN), the second image's objects all missed
    assert per_image[0]["tp@0.5"] == n0 and per_image[0]["scale"] == 0.5 and per_image[1]["status"] == "failed"
