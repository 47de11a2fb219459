"""Tests for segtool.model.context and halo tiling on real (tiny) U-Nets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segtool.errors import InputError
from segtool.model.config import UNetConfig
from segtool.model.context import measure_context
from segtool.pipeline.options import TileOptions, default_tile_halo, plan_inference_tiles
from segtool.infer.network import make_predictor, prepare_for_inference
from segtool.infer.predict import predict_image

from helpers import random_unet


def _image(shape, seed=0):
    return ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5).astype(np.float32)


def test_blur_context_is_its_radius():
    def blur(batch, r=4):
        padded = np.pad(batch, ((0, 0), (0, 0), (r, r), (r, r)))
        return ndimage.uniform_filter(padded, size=(1, 1, 2 * r + 1, 2 * r + 1), mode="constant")[:, :, r:-r, r:-r]

    profile = measure_context(_image((96, 96)), blur, tile=32, align=16)
    # A pixel d from a cut edge sees 4 - d pixels of zero padding while d < 4.
    assert profile.context == 4
    assert profile.max_diff[3] > 1e-3 and profile.max_diff[4] == 0


def test_unet_context_is_within_the_receptive_field_and_halo_tiling_matches_whole_image():
    model = random_unet("three_class", depth=2, gain=60.0)
    net = prepare_for_inference(model.net)
    predictor = make_predictor(net, "three_class")
    profile = measure_context(_image((192, 192)), predictor, tile=64, align=4)
    bound = 9 * 2**2 - 7  # the receptive field of a depth-2 U-Net reaches 29 pixels
    assert 0 < profile.context <= bound
    assert profile.max_diff[bound + 1] == 0
    assert profile.context <= default_tile_halo(model.config)

    image = _image((150, 230), seed=1)
    whole = predict_image(image, model, tiling=TileOptions(tile=256))
    tiled = predict_image(image, model, tiling=TileOptions(tile=64))
    assert whole.n_tiles == 1 and tiled.n_tiles > 4
    assert float(whole.maps.max() - whole.maps.min()) > 0.3  # the maps really vary
    assert np.abs(tiled.maps - whole.maps).max() < 1e-3
    # The old blended tiling is far off near tile edges: the halo is what buys the agreement.
    blended = predict_image(image, model, tiling=TileOptions(tile=32, overlap=0.25))
    assert np.abs(blended.maps - whole.maps).max() > 1e-2


def test_measure_context_rejects_small_or_unaligned_images():
    with pytest.raises(InputError, match="multiple of 16"):
        measure_context(np.zeros((100, 100)), lambda b: b, tile=32, align=16)
    with pytest.raises(InputError, match="tile"):
        measure_context(np.zeros((96, 96)), lambda b: b, tile=24, align=16)


def test_plan_defaults_per_device_and_explicit_overlap():
    config = UNetConfig(depth=4, patch_size=128)
    cpu = plan_inference_tiles(config, (8192, 8192), device_type="cpu")
    cuda = plan_inference_tiles(config, (8192, 8192), device_type="cuda")
    assert cpu.tile_halo == cuda.tile_halo == 104
    assert max(cuda.tile) > max(cpu.tile) and cuda.n_tiles < cpu.n_tiles
    # CPU tiles are sized under a memory budget (issue #40): recomputation grows as tiles shrink.
    assert cpu.n_tiles * cpu.tile[0] * cpu.tile[1] / 8192**2 <= 1.5
    bf16 = plan_inference_tiles(config, (8192, 8192), device_type="cpu", precision="bf16")
    assert max(bf16.tile) > max(cpu.tile) and bf16.n_tiles * bf16.tile[0] * bf16.tile[1] / 8192**2 <= 1.35
    classic = plan_inference_tiles(config, (8192, 8192), overlap=0.25)
    assert classic.tile == (128, 128) and classic.tile_halo is None and classic.batch_size == 4
    assert classic.n_tiles * 128 * 128 / 8192**2 > 1.7  # what halo tiling saves
    with pytest.raises(InputError, match="no core"):
        plan_inference_tiles(config, (1000, 1000), tile=208)


def test_band_prediction_with_halo_tiles_equals_in_memory():
    from segtool.normalize import normalize_percentile
    from segtool.infer.bands import predict_label_bands

    model = random_unet("three_class", depth=2, gain=60.0)
    image = _image((203, 150), seed=2)
    whole = predict_image(image, model, tiling=TileOptions(tile=64))
    assert whole.n_tiles >= 12  # several rows of tiles stream through the bands
    norm = normalize_percentile(image, model.config.norm_low, model.config.norm_high)
    stages = {}
    bands = list(predict_label_bands(lambda a, b: norm[a:b], image.shape, model, tiling=TileOptions(tile=64), band_rows=40,
                                     halo=20, keep_maps=True, stages=stages))
    maps = np.concatenate([band.maps for band in bands], axis=1)
    np.testing.assert_array_equal(maps, whole.maps)
    assert stages["network"] > 0 and stages["postprocess"] > 0


@pytest.mark.parametrize("tiling", [TileOptions(tile=64), TileOptions(tile=48, overlap=0.25)])
def test_labelling_tile_rows_beside_the_network_gives_the_in_memory_labels(tiling):
    from segtool.pipeline.options import ObjectOptions
    from segtool.infer.bands import label_by_tile_rows
    from segtool.infer.instances import maps_to_labels

    from helpers import dome_unet

    from segtool.normalize import normalize_percentile
    from segtool.model.modelfile import LoadedModel

    net, config = dome_unet()  # foreground where the image is over 0.3, seeds over 0.55
    model = LoadedModel(net=net, config=config)
    yy, xx = np.mgrid[:203, :150]
    image = np.zeros((203, 150), np.float32)
    for cy, cx in np.random.default_rng(4).integers(5, 145, size=(40, 2)):
        image = np.maximum(image, 1 - np.hypot(yy - cy * 1.35, xx - cx) / 9)  # touching domes, some merging
    for cy, cx in [(12, 20), (30, 120), (70, 60)]:
        # low domes: foreground without a seed, which the whole image numbers after all seeded objects
        image = np.maximum(image, 0.45 * np.clip(1 - np.hypot(yy - cy, xx - cx) / 6, 0, 1))
    whole = predict_image(image, model, tiling=tiling)
    norm = normalize_percentile(image, config.norm_low, config.norm_high)[np.newaxis]
    stages = {}
    labels, maps, n_tiles = label_by_tile_rows(norm, model, tiling=tiling, halo=20, stages=stages)
    assert n_tiles == whole.n_tiles >= 6 and int(labels.max()) >= 20
    np.testing.assert_array_equal(maps, whole.maps)
    expected = maps_to_labels(whole.maps, target=config.target, **ObjectOptions().resolve(config))
    np.testing.assert_array_equal(labels, expected)
    assert stages["network"] > 0 and stages["postprocess"] > 0
    # one tile row, or shape-split seeds: the caller labels the whole image itself
    assert label_by_tile_rows(norm[:, :40], model, tiling=tiling) is None
    assert label_by_tile_rows(norm, model, tiling=tiling, objects=ObjectOptions(split_height=2.0)) is None
