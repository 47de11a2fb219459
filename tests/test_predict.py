"""Tests for segtool.infer.predict: network preparation, tiled U-Net inference, band-by-band inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk
from torch import nn

from segtool.errors import InputError, ModelError
from segtool.metrics import match_labels
from segtool.model.config import UNetConfig
from segtool.infer.bands import predict_label_bands
from segtool.model.modelfile import LoadedModel
from segtool.pipeline.options import ObjectOptions, TileOptions, postprocess_options, resolve_tile
from segtool.infer.network import make_predictor, prepare_for_inference
from segtool.infer.predict import predict_image, scale_for_diameter

from helpers import random_unet


class _DomeNet(nn.Module):
    """A stand-in 'trained' network for domes of intensity: local, so tiling cannot change its answer much.

    distance target: foreground logit from the intensity, distance logit from a 5x5 mean of it.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.smooth = nn.Conv2d(1, 1, 5, padding=2, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 25)

    def forward(self, x):
        return torch.cat([15 * (x - 0.3), 15 * (self.smooth(x) - 0.55)], dim=1)


def _dome_model(patch=32, postprocess=None):
    config = UNetConfig(depth=2, base_channels=4, patch_size=patch, target="distance", postprocess=postprocess or {})
    return LoadedModel(net=_DomeNet(config).eval(), config=config)


def _domes(shape, centres, radius=9):
    """Intensity domes (1 at the centre, 0 at the rim) and their true labels."""
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.indices(shape)
    for i, (r, c) in enumerate(centres, start=1):
        d = np.hypot(yy - r, xx - c) / radius
        dome = np.sqrt(np.clip(1 - d**2, 0, None))
        image = np.maximum(image, dome)
        rr, cc = disk((r, c), radius, shape=shape)
        labels[rr, cc] = i
    return image, labels


def _same_partition(a, b):
    """True when two label images have the same objects up to renumbering (background included)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))


def _one_to_one(truth, pred):
    """Every true object overlaps exactly one predicted object and vice versa."""
    both = (truth > 0) & (pred > 0)
    pairs = np.unique(np.stack([truth[both], pred[both]]), axis=1)
    return (
        len(np.unique(pairs[0])) == len(pairs[0]) == int(truth.max())
        and len(np.unique(pairs[1])) == len(pairs[1]) == int(pred.max())
    )


# --------------------------------------------------------------------------- preparation


def test_prepare_matches_plain_network_and_leaves_it_alone():
    model = random_unet("three_class", depth=3, base=8)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    fast = prepare_for_inference(model.net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(2, 1, 64, 48)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), model.net(x).numpy(), rtol=1e-4, atol=1e-4)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, before[key])
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())


def test_predictor_tta_is_exact_for_an_equivariant_network():
    model = _dome_model()
    plain = make_predictor(model.net, "distance")
    tta = make_predictor(model.net, "distance", tta=True)
    batch = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(tta(batch), plain(batch), atol=1e-5)
    wide = np.random.default_rng(1).random((1, 1, 8, 16), dtype=np.float32)
    np.testing.assert_allclose(tta(wide), plain(wide), atol=1e-5)


# --------------------------------------------------------------------------- tiled inference


@pytest.mark.parametrize("target", ["three_class", "distance"])
def test_tiled_matches_whole_image_inference(target):
    from scipy import ndimage

    model = random_unet(target, depth=3, base=8, patch=64)
    image = ndimage.gaussian_filter(np.random.default_rng(0).random((150, 210)), 2).astype(np.float32)
    tiled = predict_image(image, model, tiling=TileOptions(tile=64, overlap=0.25))
    whole = predict_image(image, model, tiling=TileOptions(tile=224))  # one tile: the whole image
    assert tiled.n_tiles > 1 and whole.n_tiles == 1
    spread = float(whole.maps.max() - whole.maps.min())
    assert spread > 0.3  # the outputs really vary
    diff = np.abs(tiled.maps - whole.maps)[:, 16:-16, 16:-16]
    assert diff.max() < 0.01 * spread


def test_border_objects_are_not_split():
    # Domes centred on the tile seams of a 32-pixel tile grid (seams near 24, 48, ...).
    centres = [(24, 24), (24, 52), (50, 30), (52, 76), (80, 50), (78, 100), (100, 22)]
    image, truth = _domes((112, 120), centres)
    model = _dome_model(patch=32)
    result = predict_image(image, model, tiling=TileOptions(tile=32, overlap=0.25), objects=ObjectOptions(min_size=5))
    assert result.n_tiles > 9
    assert result.n_objects == len(centres)
    assert _one_to_one(truth, result.labels)


def test_blank_image_gives_no_objects():
    model = _dome_model()
    for image in (np.zeros((40, 50), np.uint8), np.full((40, 50), 7, np.uint16)):
        result = predict_image(image, model)
        assert result.n_objects == 0 and result.labels.dtype == np.uint16


@pytest.mark.parametrize("tiling", [TileOptions(tile=32, overlap=0.25), TileOptions(tile=64), TileOptions()])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (17, 33), (37, 53), (100, 3)])
def test_tiny_and_non_multiple_sizes(shape, tiling):
    model = random_unet("three_class", depth=2)
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    result = predict_image(image, model, tiling=tiling)
    assert result.labels.shape == shape and result.maps.shape == (3,) + shape
    assert np.isfinite(result.maps).all()
    np.testing.assert_allclose(result.maps.sum(axis=0), 1, atol=1e-4)


def test_dtypes_and_ranges_normalise_the_same():
    image, _ = _domes((64, 64), [(20, 20), (40, 44)])
    model = _dome_model()
    reference = predict_image(image, model).labels
    for scaled in ((image * 200).astype(np.uint8), (image * 60000 + 100).astype(np.uint16), image.astype(np.float64) * 1e-3 - 5):
        assert _same_partition(predict_image(scaled, model).labels, reference)


def test_input_is_not_modified():
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    before = image.copy()
    predict_image(image, random_unet(), tiling=TileOptions(tile=32, overlap=0.25))
    predict_image(image, random_unet())
    np.testing.assert_array_equal(image, before)


def test_wrong_number_of_input_channels_is_a_model_error():
    model = random_unet(in_channels=2)
    with pytest.raises(ModelError, match="model expects 2 input channels, the image has 1"):
        predict_image(np.zeros((32, 32), np.float32), model)
    model = random_unet(in_channels=1)
    with pytest.raises(ModelError, match="expects 1 input channel, the image has 3"):
        predict_image(np.zeros((3, 32, 32), np.float32), model)


def test_multichannel_model_runs():
    model = random_unet(in_channels=2)
    result = predict_image(np.random.default_rng(0).random((2, 40, 36)), model, tiling=TileOptions(tile=32, overlap=0.25))
    assert result.labels.shape == (40, 36)


def test_scale_maps_labels_back_to_the_original_size():
    image, truth = _domes((120, 140), [(30, 30), (30, 90), (80, 60)], radius=16)
    model = _dome_model()
    result = predict_image(image, model, tiling=TileOptions(scale=0.5), objects=ObjectOptions(min_size=5))
    assert result.labels.shape == (120, 140) and result.maps.shape == (2, 120, 140)
    assert result.n_objects == 3
    overlap = np.sum((truth > 0) & (result.labels > 0)) / np.sum((truth > 0) | (result.labels > 0))
    assert overlap > 0.8


def test_tta_runs_and_counts_tiles():
    model = random_unet("three_class")
    calls = []
    result = predict_image(np.random.default_rng(0).random((48, 48)), model, tiling=TileOptions(tile=32, overlap=0.25, tta=True),
                           on_tile=lambda done, total: calls.append((done, total)))
    assert result.n_tiles == 4 and calls[-1] == (4, 4)


def test_postprocess_defaults_come_from_the_model():
    image, _ = _domes((64, 64), [(20, 20), (44, 44)])
    model = _dome_model(postprocess={"min_size": 10_000})
    assert predict_image(image, model).n_objects == 0
    assert predict_image(image, model, objects=ObjectOptions(min_size=5)).n_objects == 2
    assert postprocess_options(model.config, prob_threshold=0.3) == {"min_size": 10_000, "prob_threshold": 0.3}


@pytest.mark.parametrize(
    "kwargs, match",
    [(TileOptions(tile=30), "multiple of 4"), (TileOptions(overlap=1.0), "overlap"), (TileOptions(batch_size=0), "batch size"),
     (TileOptions(scale=0), "scale")],
)
def test_rejects_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        predict_image(np.zeros((32, 32)), random_unet(), tiling=kwargs)


def test_resolve_tile_and_diameter():
    config = UNetConfig(depth=4, patch_size=256, postprocess={"median_diameter": 24.0})
    assert resolve_tile(config, (1000, 90)) == (256, 96)
    assert resolve_tile(config, (1000, 1000), 512) == (512, 512)
    model = LoadedModel(net=None, config=config)
    assert scale_for_diameter(model, 48) == 0.5
    with pytest.raises(InputError, match="diameter"):
        scale_for_diameter(model, 0)
    with pytest.raises(ModelError, match="--scale"):
        scale_for_diameter(LoadedModel(net=None, config=UNetConfig()), 30)


# --------------------------------------------------------------------------- band-by-band inference


def _run_bands(image, model, **kwargs):
    from segtool.normalize import normalize_percentile

    norm = normalize_percentile(image, model.config.norm_low, model.config.norm_high)
    bands = list(predict_label_bands(lambda a, b: norm[a:b], image.shape, model, **kwargs))
    labels = np.concatenate([band.labels for band in bands])
    maps = np.concatenate([band.maps for band in bands], axis=1) if kwargs.get("keep_maps") else None
    return bands, labels, maps


def test_bands_agree_with_in_memory_prediction():
    rng = np.random.default_rng(3)
    centres = [(int(r), int(c)) for r, c in rng.integers(10, 190, size=(40, 2))]
    image, _ = _domes((200, 150), centres, radius=7)
    image = (image * 1000 + rng.normal(0, 5, image.shape)).astype(np.float32)
    model = _dome_model(patch=32)
    whole = predict_image(image, model, objects=ObjectOptions(min_size=5))
    bands, labels, maps = _run_bands(image, model, band_rows=40, halo=20, keep_maps=True, objects=ObjectOptions(min_size=5))
    assert [b.start for b in bands] == [0, 40, 80, 120, 160]
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    np.testing.assert_array_equal(maps, whole.maps)  # same tile grid, same blend
    assert bands[-1].n_objects == whole.n_objects == int(labels.max())
    assert sorted(np.unique(labels)) == list(range(whole.n_objects + 1))  # consecutive across bands
    assert _same_partition(labels, whole.labels)


def test_bands_labelled_ahead_after_the_last_tile_row_match_in_memory_labels():
    # Small halo tiles: the maps arrive in several tile rows, and once the last one is in, the remaining bands
    # are labelled on a second thread. Every band must still equal the in-memory labelling.
    rng = np.random.default_rng(5)
    centres = [(int(r), int(c)) for r, c in rng.integers(10, 310, size=(60, 2))]
    image, _ = _domes((320, 160), centres, radius=7)
    image = (image * 1000 + rng.normal(0, 5, image.shape)).astype(np.float32)
    model = _dome_model(patch=32)
    tiling, objects = TileOptions(tile=96, tile_halo=16), ObjectOptions(min_size=5)
    whole = predict_image(image, model, tiling=tiling, objects=objects)
    bands, labels, _ = _run_bands(image, model, band_rows=24, halo=20, tiling=tiling, objects=objects)
    assert len(bands) == 14
    assert bands[-1].n_objects == whole.n_objects == int(labels.max())
    assert _same_partition(labels, whole.labels)


def test_model_split_height_reaches_in_memory_and_band_prediction():
    # Two overlapping domes whose seed region (a low seed threshold) is one blob with a neck.
    centres = [(40, 40), (40, 60), (100, 50), (150, 30)]
    image, truth = _domes((190, 100), centres, radius=12)
    plain = _dome_model(patch=32, postprocess={"seed_threshold": 0.02})
    split = _dome_model(patch=32, postprocess={"seed_threshold": 0.02, "split_height": 1.0})
    assert predict_image(image, plain, objects=ObjectOptions(min_size=5)).n_objects == 3  # the touching pair merged
    whole = predict_image(image, split, objects=ObjectOptions(min_size=5))
    assert whole.n_objects == 4
    assert float(match_labels(truth, whole.labels, thresholds=(0.7,)).f1[0]) == 1.0
    _, labels, _ = _run_bands(image, split, band_rows=40, halo=30, objects=ObjectOptions(min_size=5))
    assert _same_partition(labels, whole.labels)


def test_bands_keep_objects_crossing_band_edges_whole():
    centres = [(40, 30), (80, 70), (119, 100), (160, 40)]  # rows 40, 80, 120 are band edges
    image, truth = _domes((200, 130), centres, radius=12)
    model = _dome_model(patch=32)
    _, labels, _ = _run_bands(image, model, band_rows=40, halo=30, objects=ObjectOptions(min_size=5))
    assert int(labels.max()) == len(centres)
    assert _one_to_one(truth, labels)


def test_bands_on_images_narrower_or_shorter_than_a_tile():
    image, _ = _domes((20, 300), [(10, 50), (10, 200)], radius=8)
    model = _dome_model(patch=32)
    _, labels, _ = _run_bands(image, model, band_rows=8, halo=10, objects=ObjectOptions(min_size=5))
    assert labels.shape == (20, 300) and labels.max() == 2
    image, _ = _domes((300, 20), [(50, 10), (200, 10)], radius=8)
    _, labels, _ = _run_bands(image, model, band_rows=64, halo=10, objects=ObjectOptions(min_size=5))
    assert labels.shape == (300, 20) and labels.max() == 2


def test_bands_reject_wrong_channels():
    model = random_unet(in_channels=2)
    with pytest.raises(ModelError, match="expects 2 input channels"):
        list(predict_label_bands(lambda a, b: np.zeros((b - a, 40), np.float32), (40, 40), model))


# --------------------------------------------------------------------------- lazy reading of large TIFFs


@pytest.mark.parametrize("layout", [{}, {"compression": "zlib", "rowsperstrip": 7}, {"compression": "zlib", "tile": (32, 48)}])
def test_open_lazy_reads_any_rows(tmp_path, layout):
    import tifffile

    from segtool.pipeline.percentiles import stream_percentiles
    from segtool.pipeline.read import open_lazy

    image = np.random.default_rng(0).integers(0, 60000, (150, 170)).astype(np.uint16)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, image, **layout)
    with open_lazy(path) as lazy:
        assert lazy.shape == image.shape and lazy.dtype == np.uint16
        assert (lazy._memmap is not None) == (not layout)
        for start, stop in [(0, 150), (3, 40), (31, 33), (100, 400), (64, 65)]:
            np.testing.assert_array_equal(lazy.read_rows(start, stop), image[start:stop])
        values = stream_percentiles(lazy.read_rows, lazy.shape, lazy.dtype, [1, 50, 99.8])
    np.testing.assert_allclose(values, np.percentile(image, [1, 50, 99.8]), rtol=1e-9)


def test_open_lazy_channels_and_fallback(tmp_path):
    import tifffile

    from segtool.errors import InputError
    from segtool.pipeline.read import open_lazy

    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", tile=(16, 16), compression="zlib")
    with open_lazy(tmp_path / "rgb.tif") as lazy:
        np.testing.assert_allclose(lazy.read_rows(0, 40), rgb.astype(np.float32).mean(axis=-1), rtol=1e-6)
    with open_lazy(tmp_path / "rgb.tif", channel=2) as lazy:
        np.testing.assert_array_equal(lazy.read_rows(5, 9), rgb[5:9, :, 2])
    with pytest.raises(InputError, match="out of range"):
        open_lazy(tmp_path / "rgb.tif", channel=3)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")
    assert open_lazy(tmp_path / "stack.tif") is None  # stacks are read whole by segtool.io
    with pytest.raises(InputError, match="no such file"):
        open_lazy(tmp_path / "missing.tif")


def test_file_in_bands_writes_tiled_bigtiff(tmp_path):
    import tifffile

    from segtool.pipeline.read import open_lazy
    from segtool.infer.bands import predict_file_in_bands

    rng = np.random.default_rng(5)
    image, _ = _domes((150, 130), [(int(r), int(c)) for r, c in rng.integers(8, 122, size=(20, 2))], radius=7)
    image = (image * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", image)
    model = _dome_model(patch=32)
    whole = predict_image(image, model, objects=ObjectOptions(min_size=5))
    with open_lazy(tmp_path / "in.tif") as lazy:
        figures = predict_file_in_bands(lazy, model, tmp_path / "out" / "labels.tif", prob_path=tmp_path / "out" / "prob.tif",
                                        overlay_path=tmp_path / "out" / "overlay.png", band_rows=32, halo=16,
                                        objects=ObjectOptions(min_size=5))
    assert figures["bands"] == 5 and figures["objects"] == whole.n_objects and figures["dtype"] == "uint16"
    with tifffile.TiffFile(tmp_path / "out" / "labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        labels = tif.asarray()
    assert _same_partition(labels, whole.labels)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "prob.tif"), whole.maps, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.tif", "overlay.png", "prob.tif"]  # no temp files left
