"""The band schedule (segtool.pipeline.bands) with a fake network: a predictor and a labeller, no torch."""

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label

from segtool.errors import InputError, ModelError
from segtool.model.config import UNetConfig
from segtool.pipeline.bands import BandNetwork, label_rows_in_bands
from segtool.pipeline.options import TileOptions
from segtool.pipeline.resize import RESIZE_COLUMNS, resized_rows, resized_span, span_source


def _disks(shape=(200, 90), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    for _ in range(25):
        centre = (int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])))
        image[disk(centre, int(rng.integers(3, 9)), shape=shape)] = 1.0
    return image


def _network(image, tiling, calls=None):
    def predictor(batch):
        if calls is not None:
            calls.append(batch.shape)
        return batch.copy()  # the maps are the image: labelling them is labelling the image

    plan = tiling.plan(UNetConfig(depth=2, base_channels=4, patch_size=32), image.shape)
    return BandNetwork(predictor=predictor, label=lambda maps: label(maps[0] > 0.5).astype(np.uint32), plan=plan,
                       in_channels=1, out_channels=1)


@pytest.mark.parametrize("tiling", [TileOptions(tile=32, overlap=0.25), TileOptions(tile=64, tile_halo=8)])
def test_bands_label_a_fake_networks_maps_as_the_whole_image(tiling):
    image = _disks()
    calls, stages = [], {}
    network = _network(image, tiling, calls)
    bands = list(label_rows_in_bands(lambda a, b: image[a:b], image.shape, network, band_rows=24, halo=20,
                                     keep_maps=True, stages=stages))
    labels = np.concatenate([band.labels for band in bands])
    maps = np.concatenate([band.maps for band in bands], axis=1)
    expected = label(image > 0.5)
    np.testing.assert_array_equal(labels, expected)  # objects across band edges stay whole, numbered as one image
    assert bands[-1].n_objects == expected.max()
    assert [band.start for band in bands] == list(np.cumsum([0] + [b.labels.shape[0] for b in bands[:-1]]))
    np.testing.assert_allclose(maps[0], image, atol=1e-5)  # blending an identity predictor gives the image back
    assert calls and all(shape[1] == 1 for shape in calls)
    assert set(stages) == {"network", "postprocess"}


def test_bands_refuse_bad_sizes_and_channel_counts():
    image = _disks((64, 64))
    network = _network(image, TileOptions(tile=32, overlap=0.25))
    with pytest.raises(InputError, match="band_rows"):
        list(label_rows_in_bands(lambda a, b: image[a:b], image.shape, network, band_rows=0))
    two = np.stack([image, image])
    with pytest.raises(ModelError, match="1 input channels, the image has 2"):
        list(label_rows_in_bands(lambda a, b: two[:, a:b], image.shape, network, band_rows=16, halo=8))


def test_bands_keep_only_the_channels_the_labelling_reads_unless_maps_are_kept():
    image = _disks()
    tiling = TileOptions(tile=64, tile_halo=8)
    plan = tiling.plan(UNetConfig(depth=2, base_channels=4, patch_size=32), image.shape)
    seen = []

    def predictor(batch):  # four channels; only channel 2 holds the objects
        out = np.full((batch.shape[0], 4) + batch.shape[2:], 0.7, np.float32)
        out[:, 2] = batch[:, 0]
        return out

    def labeller(maps, label_channels_only=False):
        seen.append((maps.shape[0], label_channels_only))
        objects = maps[0] if label_channels_only else maps[2]
        return label(objects > 0.5).astype(np.uint32)

    network = BandNetwork(predictor=predictor, label=labeller, plan=plan, in_channels=1, out_channels=4,
                          label_channels=(2,))
    kept = list(label_rows_in_bands(lambda a, b: image[a:b], image.shape, network, band_rows=24, halo=20,
                                    keep_maps=True))
    assert seen and set(seen) == {(4, False)} and kept[0].maps.shape[0] == 4
    seen.clear()
    lean = list(label_rows_in_bands(lambda a, b: image[a:b], image.shape, network, band_rows=24, halo=20))
    assert seen and set(seen) == {(1, True)} and lean[0].maps is None
    expected = label(image > 0.5)
    for bands in (kept, lean):
        np.testing.assert_array_equal(np.concatenate([band.labels for band in bands]), expected)


@pytest.mark.parametrize("scale", [0.55, 1.8])
def test_bands_at_a_scale_give_the_whole_images_resize_there_and_back(scale):
    from segtool.infer.sizing import resize_channels

    # Wider than one block of the resize (RESIZE_COLUMNS) at the network's scale, so the blocks meet inside.
    image = np.random.default_rng(1).random((70, 1300)).astype(np.float32)
    size = tuple(round(n * scale) for n in image.shape)
    plan = TileOptions(tile=64, tile_halo=8).plan(UNetConfig(depth=2, base_channels=4, patch_size=32), size)
    network = BandNetwork(predictor=lambda batch: batch.copy(), label=lambda maps: label(maps[0] > 0.5).astype(np.uint32),
                          plan=plan, in_channels=1, out_channels=1, scale=scale)
    bands = list(label_rows_in_bands(lambda a, b: image[a:b], image.shape, network, band_rows=16, halo=8,
                                     keep_maps=True))
    maps = np.concatenate([band.maps for band in bands], axis=1)
    expected = resize_channels(resize_channels(image[np.newaxis], size), image.shape)
    assert maps.shape == expected.shape
    assert float(np.abs(maps - expected).max()) < 1e-5


@pytest.mark.parametrize("size", [(33, 2100), (150, 2900)])
def test_resized_rows_equal_one_resize_of_the_whole_width(size):
    # Block by block of columns gives the very values of one call on the whole width (the labels of an enlarged
    # image do not change with the blocks).
    image = np.random.default_rng(2).random((2, 90, 2500)).astype(np.float32)
    shrinking = size[0] < 90 or size[1] < 2500
    a, b = span_source(90, size[0], 7, 25, shrinking=shrinking)
    whole = resized_span(image[:, a:b], (a, 0), (90, 2500), size, (7, 0), (25, size[1]), shrinking=shrinking)
    for columns in (1000, 333, RESIZE_COLUMNS):
        blocks = resized_rows(lambda c0, c1: image[:, a:b, c0:c1], a, (90, 2500), size, (7, 25), shrinking=shrinking,
                              columns=columns)
        assert np.array_equal(blocks, whole)
