"""The normalisation percentiles: one routine for the in-memory, band and Dask schedules."""

from __future__ import annotations

import numpy as np
import pytest

from segtool.errors import InputError
from segtool.normalize import normalize_percentile
from segtool.pipeline.percentiles import (
    dask_percentiles,
    grid_step,
    percentiles_from_counts,
    sample_percentiles,
    stream_percentiles,
)

QS = [1, 50, 99.8]


def _image(dtype: str, rng) -> np.ndarray:
    values = rng.normal(300, 200, size=(90, 70))
    return (values > 300) if dtype == "bool" else values.astype(dtype)


def test_counts_give_numpy_interpolation():
    values = np.array([3, 3, 5, 9, 9, 9, 12])
    counts = np.bincount(values - 3)
    expected = np.percentile(values, [0, 10, 33.3, 50, 99, 100])
    assert np.allclose(percentiles_from_counts(counts, 3, [0, 10, 33.3, 50, 99, 100]), expected, atol=1e-9)


def test_grid_step_bounds_the_sample():
    assert grid_step(1000 * 1000, 2, 1000 * 1000) == 1
    step = grid_step(1000 * 1000, 2, 10_000)
    assert step == 10 and (1000 // step) ** 2 <= 10_000
    assert grid_step(8000, 3, 1000) == 2


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_stream_percentiles_equal_numpy(dtype, rng):
    image = _image(dtype, rng)
    found = stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, QS)
    assert np.allclose(found, np.percentile(image.astype(np.float64), QS), rtol=1e-6, atol=1e-6)


def test_stream_percentiles_sample_floats_on_a_grid(rng):
    image = rng.random((64, 64)).astype(np.float32)
    found = stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, QS, max_samples=256)
    assert np.allclose(found, np.percentile(image[::4, ::4], QS))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "bool"])
def test_dask_percentiles_equal_numpy(dtype, rng):
    da = pytest.importorskip("dask.array")
    image = _image(dtype, rng)
    expected = np.percentile(image.astype(np.float64), QS)
    found = dask_percentiles(da.from_array(image, chunks=(25, 30)), QS)
    assert np.allclose(found, expected, rtol=1e-6, atol=1e-6)


def test_dask_and_stream_agree_exactly_on_integers(rng):
    da = pytest.importorskip("dask.array")
    image = _image("uint16", rng)
    streamed = stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, QS)
    assert dask_percentiles(da.from_array(image, chunks=(25, 30)), QS) == streamed


def test_every_schedule_rejects_nan():
    da = pytest.importorskip("dask.array")
    image = np.ones((10, 10), np.float32)
    image[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dask_percentiles(da.from_array(image, chunks=5), [1, 99])
    with pytest.raises(InputError, match="NaN"):
        stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, [1, 99])
    with pytest.raises(InputError, match="NaN"):
        normalize_percentile(image)
    with pytest.raises(InputError, match="NaN"):
        sample_percentiles(image, [1, 99])


def test_every_schedule_maps_percentiles_the_same_way(rng):
    from segtool.normalize import map_to_unit

    image = (rng.random((40, 30)) * 4000).astype(np.uint16)
    low, high = stream_percentiles(lambda a, b: image[a:b], image.shape, image.dtype, [1, 99.8])
    rows = np.concatenate([map_to_unit(image[a : a + 7], low, high) for a in range(0, 40, 7)])
    np.testing.assert_array_equal(rows, map_to_unit(image, low, high))
    expected = (image.astype(np.float64) - low) / (high - low)
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-6)
    assert map_to_unit(image, low, high).dtype == np.float32
    whole = normalize_percentile(image, 1, 99.8)
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-5)
