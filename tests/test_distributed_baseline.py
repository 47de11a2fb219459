"""Big-image baseline on Dask: the same labels, threshold and fit as in memory.

Images are split into many blocks (odd block sizes too) with objects across
block borders and corners; every result is compared with
:func:`segtool.baseline.segment_baseline` on the whole image. Most tests run on
Dask's synchronous scheduler; one runs on a two-process local cluster.
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask

from segtool.baseline import segment_baseline
from segtool.distributed.big_baseline import segment_baseline_blocks
from segtool.errors import InputError
from segtool.synthetic import make_nuclei_image

SHAPE = (1024, 768)


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    image, _ = make_nuclei_image(SHAPE, n_nuclei=160, seed=4, illumination="vignette", radius_range=(6, 16))
    return image


def assert_same_labels(got, expected: np.ndarray) -> None:
    """Same objects (a one-to-one map between label ids on identical masks), then the same numbering."""
    assert got.dtype == np.uint32
    fg = expected > 0
    assert np.array_equal(got > 0, fg)
    pairs = np.unique(np.stack([got[fg], expected[fg]]), axis=1)
    assert pairs.shape[1] == np.unique(got[fg]).size == np.unique(expected[fg]).size
    assert np.array_equal(got, expected)


def assert_matches_in_memory(image: np.ndarray, chunks, **options) -> None:
    blocks = da.from_array(image, chunks=chunks)
    result = segment_baseline_blocks(blocks, **options)
    expected = segment_baseline(image, **options)
    assert result.labels.chunks == blocks.chunks
    assert_same_labels(result.labels.compute(), expected.labels)
    assert result.n_objects == int(expected.labels.max())
    assert result.threshold == expected.threshold
    assert result.polarity == expected.polarity
    assert np.array_equal(result.fit.coefficients, expected.fit.coefficients)
    assert np.array_equal(result.corrected.compute(), expected.corrected)  # bit for bit
    assert np.array_equal(result.background.compute(), expected.background)


def crossing_objects(labels: np.ndarray, chunks: tuple[int, int]) -> int:
    """Objects with pixels in more than one block."""
    rows, cols = np.nonzero(labels)
    ids, block = labels[rows, cols], (rows // chunks[0]) * 10_000 + cols // chunks[1]
    pairs = np.unique(np.stack([ids, block]), axis=1)
    return int(np.count_nonzero(np.bincount(pairs[0]) > 1))


def test_objects_cross_block_borders(nuclei):
    # The fixture is only a fair test if many nuclei straddle block borders.
    labels = segment_baseline(nuclei).labels
    assert labels.max() > 100
    assert crossing_objects(labels, (128, 96)) > 40


@pytest.mark.parametrize(
    "chunks, options",
    [
        ((128, 96), {}),
        ((257, 131), {"degree": 0}),
        ((128, 96), {"degree": 4, "polarity": "auto", "threshold": "li", "min_size": 5}),
        ((200, 777), {"robust": False, "threshold": 150.0, "min_size": 0}),
        ((99, 128), {"threshold": "yen", "min_size": 50}),
        ((128, 96), {"smooth": 1.0}),
        ((61, 47), {"smooth": 2.5, "degree": 1, "threshold": "triangle"}),
    ],
)
def test_matches_in_memory(nuclei, chunks, options):
    assert_matches_in_memory(nuclei, chunks, **options)


@pytest.mark.parametrize("sigma, chunks", [(0.1, (64, 50)), (1.0, (128, 96)), (2.5, (61, 47)), (3.0, (7, 300))])
def test_smoothing_is_bitwise_exact(sigma, chunks):
    # The labels hide small errors in the smoothed values; compare the values.
    from scipy import ndimage as ndi

    from segtool.distributed.big_baseline import _smoothed

    values = np.random.default_rng(1).normal(size=(300, 280)).astype(np.float32)
    smoothed = _smoothed(da.from_array(values, chunks=chunks), sigma).compute()
    assert np.array_equal(smoothed, ndi.gaussian_filter(values, sigma, mode="nearest"))


@pytest.mark.parametrize("polarity", ["dark", "auto"])
def test_dark_objects(nuclei, polarity):
    dark = (nuclei.max() - nuclei).astype(np.uint16)
    assert_matches_in_memory(dark, (128, 96), polarity=polarity, degree=2)


def test_small_image_is_segmented_in_memory():
    image, _ = make_nuclei_image((300, 256), n_nuclei=20, seed=2)  # under 2**18 pixels
    assert_matches_in_memory(image, (64, 50), smooth=0.5, fill_holes=True)


def shapes_image() -> np.ndarray:
    """600 x 500 objects built to meet at block borders and corners of 64 x 50 blocks."""
    image = np.full((600, 500), 10.0, dtype=np.float32)
    on = 100.0
    image[63, 49] = image[64, 50] = on  # touch only diagonally, across a corner of four blocks
    image[64, 49] = image[63, 50] = 10.0
    image[127, 210] = image[128, 211] = on  # diagonally across a row seam
    image[300, 99] = image[301, 100] = on  # diagonally across a column seam
    image[299, 100] = image[302, 99] = on  # ... and a second diagonal pair on the same seam
    image[150:401, 160] = image[150:401, 290] = on  # a U joined only far from its tops
    image[400, 160:291] = on
    image[191:193, 20:480] = on  # along a row seam, through many blocks
    image[0, 0] = image[599, 499] = image[0, 499] = on  # image corners
    image[500:600, 440:460] = on  # on the image border, over blocks
    yy, xx = np.mgrid[:600, :500]
    image[(yy - 256) ** 2 + (xx - 250) ** 2 < 40**2] = on  # a disk on a block corner
    image[((yy - 448) ** 2 + (xx - 100) ** 2 < 30**2) & ((yy + xx) % 7 == 0)] = on  # diagonal stripes
    return image


@pytest.mark.parametrize("chunks", [(64, 50), (64, 500), (600, 50), (37, 23)])
def test_connectivity_across_blocks(chunks):
    assert_matches_in_memory(shapes_image(), chunks, degree=0, threshold=50.0, min_size=1)


def rings_image() -> np.ndarray:
    """600 x 500 rings and holes around the borders of 64 x 50 blocks."""
    image = np.full((600, 500), 10.0, dtype=np.float32)

    def square_ring(top, left, size, width, value=100.0):
        image[top : top + size, left : left + size] = value
        image[top + width : top + size - width, left + width : left + size - width] = 10.0

    square_ring(100, 80, 60, 3)  # hole over a block corner
    square_ring(126, 248, 5, 1)  # 16 px ring, 9 px hole, on a block corner: kept at min_size 20 only if filled
    square_ring(-1, 300, 40, 3)  # open to the image's top border: no hole
    square_ring(250, 30, 50, 4)  # holds another object: not a hole of either
    image[273:277, 53:57] = 100.0
    square_ring(240, 180, 80, 4)  # a 1-px diamond ring inside a ring: every pixel of the
    yy, xx = np.mgrid[:600, :500]  # diamond also touches its own hole, which has the higher
    image[np.abs(yy - 280) + np.abs(xx - 220) == 15] = 100.0  # rank, so in memory it does not count for the outer gap
    square_ring(400, 300, 30, 2)  # two rings sharing a wall: one object, two holes
    square_ring(400, 328, 30, 2)
    square_ring(480, 40, 20, 2)  # a corner cut diagonally: open for 8-, closed for
    image[480, 40] = image[481, 41] = 10.0  # 4-connected background, so still a hole
    return image


@pytest.mark.parametrize("min_size", [1, 20])
@pytest.mark.parametrize("chunks", [(64, 50), (37, 23)])
def test_fill_holes(chunks, min_size):
    image = rings_image()
    unfilled = segment_baseline(image, degree=0, threshold=50.0, min_size=min_size).labels
    filled = segment_baseline(image, degree=0, threshold=50.0, min_size=min_size, fill_holes=True).labels
    assert np.count_nonzero(filled) > np.count_nonzero(unfilled) + 1000  # holes were filled
    assert_matches_in_memory(image, chunks, degree=0, threshold=50.0, min_size=min_size, fill_holes=True)


def test_fill_holes_on_nuclei(nuclei):
    assert_matches_in_memory(nuclei, (128, 96), fill_holes=True, smooth=0.7)


def test_more_than_65535_objects():
    image = np.zeros((600, 600), dtype=np.uint8)
    image[::2, ::2] = 255  # 90,000 single pixels, not touching even diagonally
    blocks = da.from_array(image, chunks=(128, 96))
    result = segment_baseline_blocks(blocks, degree=0, threshold=100.0, min_size=1)
    assert result.n_objects == 90_000
    expected = segment_baseline(image, degree=0, threshold=100.0, min_size=1).labels
    assert expected.dtype == np.uint32
    assert_same_labels(result.labels.compute(), expected)


def test_same_errors_as_in_memory():
    image = np.where(np.eye(*SHAPE) > 0, np.nan, 1.0)
    with pytest.raises(InputError, match="NaN or infinite"):
        segment_baseline(image, degree=1)
    with pytest.raises(InputError, match="NaN or infinite"):
        segment_baseline_blocks(da.from_array(image, chunks=(128, 96)), degree=1)


@pytest.mark.parametrize(
    "image, reason",
    [
        (np.full(SHAPE, 7.0, dtype=np.float32), "image is constant"),
        (np.add.outer(np.arange(1024.0), np.arange(768.0)), "image is only smooth background"),
    ],
)
@pytest.mark.parametrize("smooth", [0.0, 1.5])
def test_empty_images_give_no_objects_as_in_memory(image, reason, smooth):
    in_memory = segment_baseline(image, degree=1, smooth=smooth)
    assert in_memory.empty_reason == reason and not in_memory.labels.any()
    blocks = segment_baseline_blocks(da.from_array(image, chunks=(128, 96)), degree=1, smooth=smooth)
    assert blocks.empty_reason == reason and blocks.n_objects == 0 and blocks.threshold is None
    labels = blocks.labels.compute()
    assert labels.shape == image.shape and not labels.any()
    assert np.allclose(blocks.background.compute(), in_memory.background)


def test_flat_threshold_subsample_is_refused():
    # Noise-free, and the one object lies between the subsample's pixels: in
    # memory Otsu falls back to every pixel; big-image mode asks for a number.
    image = np.zeros((1024, 1024), dtype=np.float32)
    image[500, 500] = 1.0  # the subsample has every 2nd row and column from 1
    assert segment_baseline(image, degree=0, min_size=1).labels.max() == 1
    with pytest.raises(InputError, match="give the threshold as a number"):
        segment_baseline_blocks(da.from_array(image, chunks=256), degree=0, min_size=1)
    result = segment_baseline_blocks(da.from_array(image, chunks=256), degree=0, min_size=1, threshold=0.5)
    assert result.n_objects == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"split": True}, "--split is not available in big-image mode"),
        ({"degree": 21}, "degree must be"),
        ({"threshold": "median"}, "threshold must be one of"),
        ({"smooth": -1}, "smooth must be"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(InputError, match=message):
        segment_baseline_blocks(da.zeros(SHAPE, chunks=256), **options)


def test_bad_images():
    with pytest.raises(InputError, match="2-D"):
        segment_baseline_blocks(da.zeros((3, 600, 600), chunks=256))
    with pytest.raises(InputError, match="real numbers"):
        segment_baseline_blocks(da.zeros(SHAPE, dtype=complex, chunks=256))
    unknown = da.zeros(SHAPE, chunks=256)
    unknown = unknown[unknown[:, 0] == 0]
    with pytest.raises(InputError, match="unknown size"):
        segment_baseline_blocks(unknown)


def test_outputs_are_lazy(nuclei):
    blocks = da.from_array(nuclei, chunks=(128, 96))
    result = segment_baseline_blocks(blocks)
    for array, dtype in ((result.labels, np.uint32), (result.background, np.float32), (result.corrected, np.float32)):
        assert isinstance(array, da.Array)
        assert array.dtype == dtype
        assert array.chunks == blocks.chunks


# ------------------------------------------------------------ across processes


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_on_local_cluster(client, nuclei):
    options = {"smooth": 0.7, "fill_holes": True, "polarity": "auto"}
    with dask.config.set(scheduler=client):
        assert_matches_in_memory(nuclei, (257, 131), **options)
    assert len(client.scheduler_info()["workers"]) == 2
