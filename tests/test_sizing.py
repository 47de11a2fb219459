"""Object size found automatically (issue #33): the ladder estimate, robust normalisation, the baseline's size rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label
from skimage.transform import resize

from segtool.baseline import MIN_SIZE, segment_baseline
from segtool.errors import InputError
from segtool.normalize import bright_outlier_mask, normalize_percentile, robust_percentiles
from segtool.objectsize import EQUIVALENT_PER_INSCRIBED, estimate_diameter, size_defaults
from segtool.synthetic import make_nuclei_image
from segtool.infer.sizing import (
    SizeOptions,
    choose_window,
    estimate_size,
    map_confidence,
    median_diameter,
    scale_for_estimate,
)
from tests.helpers import invoke


def _discs(size: int, period: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    centre = period // 2
    return ((((yy % period) - centre) ** 2 + ((xx % period) - centre) ** 2) < radius**2).astype(np.float32)


def _stand_in(best_diameter: float):
    """A segmenter that finds bright discs and is most confident on discs ``best_diameter`` across."""

    def segment_one(window):
        labels = label(window[0] > 0.5)
        diameter, _ = median_diameter(labels)
        confidence = 1.0 / (1.0 + abs(diameter - best_diameter) / best_diameter)
        fg = window[0] > 0.5
        maps = np.stack([1.0 - fg, fg * confidence, fg * (1 - confidence), fg]).astype(np.float32)
        return maps, labels

    def segment(windows):
        calls.append(len(windows))
        return [segment_one(w) for w in windows]

    calls: list[int] = []
    segment.calls = calls
    return segment


# ----------------------------------------------------------------------------- the ladder, with a stand-in network


# small discs are enlarged only to the kept band's lower edge (20 / 1.3 px), large ones shrunk to 20 px
@pytest.mark.parametrize("radius, expected_scale", [(5, 2.0 / 1.3), (10, 1.0), (20, 0.5), (40, 0.25)])
def test_ladder_picks_the_scale_that_brings_discs_to_the_training_size(radius, expected_scale):
    image = _discs(8 * radius * 4, 4 * radius, radius)[None]
    est = estimate_size(image, _stand_in(20.0), target="three_class_distance", trained_diameter=20.0)
    assert est.diameter == pytest.approx(2 * radius, rel=0.1)
    assert est.scale == pytest.approx(expected_scale, rel=0.1)
    # every rung of the ladder is recorded
    assert [step[0] for step in est.ladder] == sorted(step[0] for step in est.ladder)


def test_rungs_go_to_the_network_in_one_batch_and_enlarging_only_when_needed():
    large = _stand_in(20.0)
    estimate_size(_discs(640, 80, 20)[None], large, target="three_class", trained_diameter=20.0)
    assert large.calls == [4]  # 1/8 .. 1 together; at scale 1 the discs (40 px) are large enough: no 2x rung
    small = _stand_in(20.0)
    estimate_size(_discs(320, 20, 5)[None], small, target="three_class", trained_diameter=20.0)
    assert len(small.calls) == 2 and small.calls[1] == 1  # 10 px discs: then the 2x rung, on its own


def test_no_objects_at_any_scale_keeps_the_image_size():
    est = estimate_size(np.zeros((1, 128, 128), np.float32), _stand_in(20.0), target="three_class", trained_diameter=20.0)
    assert est.diameter is None and est.scale == 1.0


def test_keep_within_leaves_near_sizes_alone():
    assert scale_for_estimate(24.0, 20.0, SizeOptions(keep_within=1.25, keep_always=1.25)) == 1.0
    assert scale_for_estimate(40.0, 20.0, SizeOptions(keep_within=1.25, keep_always=1.25)) == 0.5
    assert scale_for_estimate(23.0, 20.0, own_confidence=0.5, best_confidence=0.9) == 1.0  # a tiny resize: never
    # within the band, the image keeps its size only when the network is as sure of it there
    wide = SizeOptions(keep_within=3.0)
    assert scale_for_estimate(40.0, 20.0, wide, own_confidence=0.9, best_confidence=0.9) == 1.0
    assert scale_for_estimate(40.0, 20.0, wide, own_confidence=0.8, best_confidence=0.9) == 0.5
    assert scale_for_estimate(40.0, 20.0, own_confidence=0.9, best_confidence=0.9) == 0.5  # the default keeps less
    assert scale_for_estimate(80.0, 20.0, own_confidence=0.99, best_confidence=0.9) == 0.25  # outside: always
    assert scale_for_estimate(1000.0, 20.0) == SizeOptions().min_scale  # bounded
    with pytest.raises(InputError):
        SizeOptions(keep_within=0.5)
    with pytest.raises(InputError):
        SizeOptions(keep_within=1.5, keep_always=2.0)


def test_small_objects_are_enlarged_only_to_the_edge_of_the_kept_band():
    # 10 px objects, training diameter 20, band 1.3x: enlarged to 20 / 1.3 px, not to 20 px
    assert scale_for_estimate(10.0, 20.0) == pytest.approx(2.0 / 1.3)
    assert 10.0 * scale_for_estimate(10.0, 20.0) == pytest.approx(20.0 / SizeOptions().keep_always)
    assert scale_for_estimate(10.0, 20.0, SizeOptions(enlarge_to_edge=False)) == pytest.approx(2.0)
    # just below the band: a resize of a few per cent, never a shrink
    assert 1.0 < scale_for_estimate(15.0, 20.0) < 1.03
    # large objects still go to the training diameter, unless shrink_to_edge asks for the upper edge
    assert scale_for_estimate(40.0, 20.0) == pytest.approx(0.5)
    assert scale_for_estimate(40.0, 20.0, SizeOptions(shrink_to_edge=True)) == pytest.approx(0.5 * 1.3)
    assert scale_for_estimate(2.0, 20.0) == SizeOptions().max_scale  # bounded as before
    # the wider confidence band: a confidence test that fails enlarges to its always-kept edge
    wide = SizeOptions(keep_within=3.0)
    assert scale_for_estimate(10.0, 20.0, wide, own_confidence=0.8, best_confidence=0.9) == pytest.approx(2.0 / 1.3)


def test_map_confidence_reads_foreground_only():
    maps = np.zeros((4, 3, 3), np.float32)
    maps[0] = 1.0  # all background: no foreground to judge
    assert map_confidence(maps, "three_class_distance") == 0.0
    maps[:, 1, 1] = [0.0, 0.9, 0.1, 1.0]
    assert map_confidence(maps, "three_class_distance") == pytest.approx(0.9)


def test_window_sits_on_the_objects():
    image = np.zeros((1, 400, 400), np.float32)
    image[0, 300:380, 20:100] = _discs(80, 20, 6)
    rows, cols = choose_window(image, 128)
    assert rows.start <= 300 and rows.stop >= 380 and cols.start <= 20 and cols.stop >= 100
    assert rows.stop - rows.start == 128 and cols.stop - cols.start == 128


# ----------------------------------------------------------------------------- the shipped network


@pytest.fixture(scope="module")
def shipped():
    import torch

    from segtool.infer.predict import find_packaged_model
    from segtool.infer.network import load_for_inference

    torch.set_num_threads(1)
    return load_for_inference(find_packaged_model(), precision="fp32")


@pytest.mark.slow
def test_synthetic_image_at_several_scales_gets_the_same_count(shipped):
    from segtool.pipeline.options import TileOptions
    from segtool.infer.predict import predict_image

    image, truth = make_nuclei_image((192, 192), n_nuclei=14, seed=3, radius_range=(9, 12), touching=0.0,
                                     illumination="none")
    n_true = int(truth.max())
    counts = {}
    for factor in (0.75, 1.0, 2.0, 3.0, 4.0):
        side = round(192 * factor)
        scaled = resize(image, (side, side), order=1, preserve_range=True, anti_aliasing=factor < 1).astype(np.float32)
        result = predict_image(scaled, shipped, tiling=TileOptions(scale=None))
        counts[factor] = result.n_objects
        assert result.size is not None and result.size.diameter == pytest.approx(21 * factor, rel=0.3)
        # the network saw the nuclei at about its training size (a resize within 1.3x may be skipped)
        assert result.size.scale == pytest.approx(1.0 / factor, rel=0.3)
    assert all(count == n_true for count in counts.values()), counts


@pytest.mark.slow
def test_saturated_blobs_keep_the_dim_nuclei(shipped):
    from segtool.pipeline.options import TileOptions
    from segtool.infer.predict import predict_image

    image, truth = make_nuclei_image((256, 256), n_nuclei=25, seed=5, radius_range=(8, 11), touching=0.0,
                                     illumination="none")
    bright = image.copy()
    yy, xx = np.mgrid[:256, :256]
    peak = float(image.max()) * 20  # saturated mitotic cells, far above the others
    for cy, cx in ((30, 30), (128, 220), (230, 60)):
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
        bright[blob] = peak
    blob_ids = set(np.unique(truth[bright == peak])) - {0}
    dim_truth = np.where(np.isin(truth, list(blob_ids)), 0, truth)
    n_dim = len(set(np.unique(dim_truth)) - {0})
    result = predict_image(bright, shipped, tiling=TileOptions(scale=1.0))
    found = set(np.unique(result.labels[dim_truth > 0])) - {0}
    assert len(found) >= 0.9 * n_dim
    # without the outlier rule the 99.8th percentile is the blobs' value and the nuclei fade to a twentieth
    plain = normalize_percentile(bright, 1, 99.8)
    assert float(np.median(plain[dim_truth > 0])) < 0.1
    robust = normalize_percentile(bright, 1, 99.8, robust=True)
    assert float(np.median(robust[dim_truth > 0])) > 0.3


def test_robust_percentiles_equal_plain_ones_without_outliers():
    image, _ = make_nuclei_image((128, 128), n_nuclei=12, seed=1)
    assert bright_outlier_mask(image, background=float(np.percentile(image, 1))) is None
    lo, hi = robust_percentiles(image, 1, 99.8)
    assert (lo, hi) == tuple(np.percentile(image.astype(np.float32), [1, 99.8]))


# ----------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_diameter_given_by_hand_overrides_the_estimate(tmp_path):
    import tifffile

    image, _ = make_nuclei_image((128, 128), n_nuclei=8, seed=2, radius_range=(15, 20), touching=0.0)
    tifffile.imwrite(tmp_path / "a.tif", image)
    given = invoke("predict", str(tmp_path / "a.tif"), "-o", str(tmp_path / "given"), "--diameter", "30", "--json",
                    "--threads", "1")
    assert given.exit_code == 0, given.output
    record = json.loads(given.stdout.splitlines()[0])
    assert record["diameter"] == 30 and record["diameter_source"] == "given"
    assert record["scale"] == pytest.approx(20.96 / 30, rel=1e-3)
    auto = invoke("predict", str(tmp_path / "a.tif"), "-o", str(tmp_path / "auto"), "--json", "--threads", "1")
    assert auto.exit_code == 0, auto.output
    record = json.loads(auto.stdout.splitlines()[0])
    assert record["diameter_source"] == "estimated" and 25 < record["diameter"] < 45
    assert "size" in record["stage_seconds"]
    bad = invoke("predict", str(tmp_path / "a.tif"), "-o", str(tmp_path / "bad"), "--diameter", "-3")
    assert bad.exit_code == 2 and "--diameter" in bad.output


# ----------------------------------------------------------------------------- the classical baseline


def test_diameter_from_a_mask_counts_touching_discs_as_two():
    mask = _discs(240, 60, 20) > 0
    mask[:, 28:32] = True  # join every column of discs into one component
    assert estimate_diameter(mask) / EQUIVALENT_PER_INSCRIBED == pytest.approx(40, abs=3)


def test_size_defaults_scale_with_area_and_diameter():
    assert size_defaults(42.0, min_size=MIN_SIZE, split_height=1.0) == (80, 2.0)
    with pytest.raises(InputError):
        size_defaults(-1.0, min_size=20, split_height=1.0)


def test_baseline_follows_the_size_of_large_nuclei():
    image, truth = make_nuclei_image((128, 128), n_nuclei=10, seed=4, radius_range=(7, 9), touching=0.0,
                                     illumination="none")
    large = resize(image, (512, 512), order=1, preserve_range=True).astype(np.float32)
    auto = segment_baseline(large, diameter="auto")
    assert auto.diameter == pytest.approx(4 * 16, rel=0.35)
    assert auto.min_size > 5 * MIN_SIZE
    given = segment_baseline(large, diameter=30.0)
    assert given.min_size == round(MIN_SIZE * (30 / 21) ** 2) and given.diameter == 30.0
    plain = segment_baseline(large)
    assert plain.min_size == MIN_SIZE and plain.diameter is None
    assert int(auto.labels.max()) == int(truth.max())


@pytest.mark.slow
def test_z_stack_is_rescaled_once_from_its_middle_plane(shipped, tmp_path):
    import tifffile

    from segtool.pipeline.options import TileOptions
    from segtool.volume.predict import StackPredictOptions, predict_stack_file

    image, truth = make_nuclei_image((96, 96), n_nuclei=6, seed=7, radius_range=(9, 11), touching=0.0,
                                     illumination="none")
    large = resize(image, (288, 288), order=1, preserve_range=True).astype(np.float32)  # nuclei ~60 px across
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([large] * 5), imagej=True, metadata={"axes": "ZYX"})
    figures = predict_stack_file(tmp_path / "stack.tif", shipped, tmp_path / "auto.tif",
                                 options=StackPredictOptions(mode="stitch", tiling=TileOptions(scale=None)))
    assert figures["diameter_source"] == "estimated"
    assert figures["scale"] == pytest.approx(21 / 60, rel=0.3)
    labels = tifffile.imread(tmp_path / "auto.tif")
    assert int(labels[2].max()) == int(truth.max()) == figures["objects"]


@pytest.mark.slow
def test_a_large_image_of_large_objects_is_shrunk_in_memory_instead_of_banded(tmp_path, monkeypatch):
    import tifffile

    import segtool.tasks.predict as predict_task

    # thresholds scaled down so that a small image plays a large one
    monkeypatch.setattr(predict_task, "BAND_PIXELS", 200 * 200)
    monkeypatch.setattr(predict_task, "AUTO_WHOLE_PIXELS", 400 * 400)
    image, truth = make_nuclei_image((96, 96), n_nuclei=6, seed=7, radius_range=(9, 11), touching=0.0,
                                     illumination="none")
    tifffile.imwrite(tmp_path / "large.tif", resize(image, (288, 288), order=1, preserve_range=True).astype(np.float32))
    tifffile.imwrite(tmp_path / "small.tif", np.tile(image, (3, 3)))  # objects of the model's size: bands
    tifffile.imwrite(tmp_path / "huge.tif", np.zeros((420, 420), np.float32))  # over AUTO_WHOLE_PIXELS: bands
    result = invoke("predict", str(tmp_path / "large.tif"), str(tmp_path / "small.tif"), str(tmp_path / "huge.tif"),
                    "-o", str(tmp_path / "out"), "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    records = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["large.tif"]["bands"] == 0 and records["large.tif"]["scale"] < 0.6
    assert records["large.tif"]["objects"] == int(truth.max())
    assert records["small.tif"]["bands"] > 0 and records["small.tif"]["scale"] == 1.0
    assert records["huge.tif"]["bands"] > 0



def test_spots_inside_nuclei_are_not_taken_for_nuclei():
    # the issue's mouse fibroblasts: chromocentres found at the fine rungs agree with each other and win on
    # confidence; the nuclei that hold them, found whole at the coarse rungs, must win instead
    from segtool.infer.parts import RungView
    from segtool.infer.sizing import choose_diameter, median_diameter as diameter_of

    whole = slice(0, 640)
    nuclei = label(_discs(640, 160, 50) > 0)  # 100 px nuclei, at the image's own size
    spots = np.zeros_like(nuclei)
    for cy in range(80, 640, 160):
        for cx in range(80, 640, 160):
            for dy, dx in ((-20, -20), (-20, 20), (20, -20), (20, 20), (0, 0)):
                spots[cy + dy - 4 : cy + dy + 4, cx + dx - 4 : cx + dx + 4] = 1
    spots = label(spots)
    views, ladder = {}, []
    for scale, labels, confidence in ((0.125, nuclei[::8, ::8], 0.8), (0.25, nuclei[::4, ::4], 0.8),
                                      (1.0, spots, 0.95), (2.0, np.kron(spots, np.ones((2, 2), spots.dtype)), 0.95)):
        views[scale] = RungView(scale, whole, whole, labels)
        d, n = diameter_of(labels)
        ladder.append((scale, n, d, confidence))
    assert choose_diameter(ladder) == pytest.approx(9.0, rel=0.1)  # the spots, on confidence alone
    assert choose_diameter(ladder, views=views) == pytest.approx(100.0, rel=0.1)

def test_packed_small_nuclei_are_not_taken_for_parts_of_blobs():
    # small nuclei that a coarse rung blurs into blobs cover most of each blob: they stay the objects
    from segtool.infer.parts import RungView, are_parts_of

    whole = slice(0, 256)
    blobs = np.zeros((64, 64), np.int32)
    blobs[4:60, 4:60] = 1
    packed = label(_discs(256, 16, 7.5) > 0)
    assert not are_parts_of(RungView(1.0, whole, whole, packed), RungView(0.25, whole, whole, blobs))
    spots = label(_discs(256, 48, 4) > 0)
    assert are_parts_of(RungView(1.0, whole, whole, spots), RungView(0.25, whole, whole, blobs))


def _nuclei_with_chromocentres(radius: float, seed: int):
    """Synthetic nuclei (1024², 40 asked) with 6-12 blurred bright spots each, 3.5x the nucleoplasm: mouse nuclei."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    image, truth = make_nuclei_image((1024, 1024), n_nuclei=40, seed=seed, radius_range=(radius * 0.85, radius * 1.15),
                                     touching=0.2, illumination="none")
    image = image.astype(np.float32)
    spots = np.zeros_like(image)
    for k in range(1, int(truth.max()) + 1):
        ys, xs = np.nonzero(truth == k)
        picks = rng.integers(len(ys), size=int(rng.integers(6, 12)))
        spots[ys[picks], xs[picks]] = 1.0
    sigma = radius / 10
    spots = ndi.gaussian_filter(spots, sigma) * (2 * np.pi * sigma**2)
    image = ndi.gaussian_filter(image + spots * 2.5 * float(np.median(image[truth > 0])), 1.0)
    return image, truth


@pytest.mark.slow
def test_nuclei_with_chromocentres_are_counted_as_nuclei(shipped):
    from segtool.pipeline.options import TileOptions
    from segtool.infer.predict import predict_image

    image, truth = _nuclei_with_chromocentres(30.0, seed=23)
    result = predict_image(image, shipped, tiling=TileOptions(scale=None))
    n_true = int(truth.max())
    assert result.size.diameter == pytest.approx(60.0, rel=0.3)
    assert abs(result.n_objects - n_true) <= 0.25 * n_true  # not one object per chromocentre (6-12 each)


@pytest.mark.parametrize("transform, expected", [("intensity", True), ("hematoxylin", False)])
def test_whole_over_parts_is_off_for_stained_tissue(monkeypatch, transform, expected):
    # in H&E a coarse rung finds tissue whole, holding nuclei: not a nucleus and its chromocentres
    from types import SimpleNamespace

    import segtool.infer.sizing as sizing
    from segtool.model.config import UNetConfig

    seen = []
    monkeypatch.setattr(sizing, "estimate_size", lambda *args, options, **kwargs: seen.append(options))
    config = UNetConfig(depth=2, input=transform, channels="grey")
    net = SimpleNamespace(segtool_backend="onnxruntime", segtool_prepared=True, predictor=lambda tta=False: None)
    sizing.estimate_for_model(np.zeros((1, 64, 64), np.float32), SimpleNamespace(config=config, net=net), objects={},
                              trained_diameter=20.0)
    assert seen[0].whole_over_parts is expected
