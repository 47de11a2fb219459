"""Tests for segtool.pipeline.tiling: tile plans, the blending window, tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segtool.errors import InputError
from segtool.pipeline.tiling import (
    blend_window,
    halo_padded_shape,
    plan_halo_tiles,
    plan_tiles,
    predict_tiled,
    predict_tiled_rows,
    reflect_rows,
    tile_shape,
)


def _coverage(shape, tiles):
    count = np.zeros(shape, int)
    for tile in tiles:
        count[tile] += 1
    return count


# --------------------------------------------------------------------------- plan_tiles


def test_plan_exact_fit_is_one_tile():
    assert plan_tiles((256, 256), 256, 0.25) == [(slice(0, 256), slice(0, 256))]


def test_plan_known_positions():
    # 448 = 256 + 192: two tiles with exactly 25 % overlap.
    starts = sorted({sy.start for sy, _ in plan_tiles((448, 256), 256, 0.25)})
    assert starts == [0, 192]
    # 500 needs a third? (500-256)/192 = 1.27 -> 3 tiles, evenly spaced, last flush.
    starts = sorted({sy.start for sy, _ in plan_tiles((500, 256), 256, 0.25)})
    assert starts == [0, 122, 244]


def test_plan_rectangular_tile_and_small_axis():
    tiles = plan_tiles((50, 1000), (64, 128), 0.5)
    assert {(sy.start, sy.stop) for sy, _ in tiles} == {(0, 50)}
    xs = [sx for _, sx in tiles]
    assert xs[0].start == 0 and xs[-1].stop == 1000
    assert all(sx.stop - sx.start == 128 for sx in xs)


def test_plan_row_major_order():
    tiles = plan_tiles((20, 20), 8, 0.25)
    keys = [(sy.start, sx.start) for sy, sx in tiles]
    assert keys == sorted(keys)


def test_plan_zero_overlap_tiles_abut():
    tiles = plan_tiles((12, 4), 4, 0.0)
    assert [(sy.start, sy.stop) for sy, _ in tiles] == [(0, 4), (4, 8), (8, 12)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (0, 5), "tile": 4}, "cannot tile"),
        ({"shape": (5, 5), "tile": 0}, "tile sizes"),
        ({"shape": (5, 5), "tile": 4, "overlap": 1.0}, "overlap"),
        ({"shape": (5, 5), "tile": 4, "overlap": -0.1}, "overlap"),
        ({"shape": (5, 5), "tile": (4, 4, 4)}, "does not match"),
    ],
)
def test_plan_rejects_bad_values(kwargs, match):
    with pytest.raises(InputError, match=match):
        plan_tiles(**kwargs)


@settings(max_examples=100, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    tile_h=st.integers(1, 96),
    tile_w=st.integers(1, 96),
    overlap=st.floats(0.0, 0.9),
)
def test_plan_properties(height, width, tile_h, tile_w, overlap):
    tiles = plan_tiles((height, width), (tile_h, tile_w), overlap)
    # Tiles cover every pixel, stay inside, and all have the expected size.
    assert _coverage((height, width), tiles).min() >= 1
    expected = tile_shape((height, width), (tile_h, tile_w))
    for sy, sx in tiles:
        assert 0 <= sy.start and sy.stop <= height and 0 <= sx.start and sx.stop <= width
        assert (sy.stop - sy.start, sx.stop - sx.start) == expected
    # Evenly spaced with the last tile flush, neighbours overlapping by >= overlap (minus rounding).
    for axis, (n, t) in enumerate(zip((height, width), expected)):
        starts = sorted({tile[axis].start for tile in tiles})
        assert starts[0] == 0 and starts[-1] + t == n
        steps = np.diff(starts)
        if len(steps):
            assert steps.max() - steps.min() <= 1
            assert steps.max() <= t * (1 - overlap) + 1


# --------------------------------------------------------------------------- blend_window


def test_window_smooth_positive_symmetric():
    w = blend_window((64, 32))
    assert w.dtype == np.float32 and w.shape == (64, 32)
    assert w.min() > 0 and np.isclose(w.max(), 1.0)
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    # Monotone from the edge to the middle along a row through the centre.
    assert np.all(np.diff(w[32, :16]) >= 0)


def test_window_rejects_bad_floor():
    with pytest.raises(InputError, match="floor"):
        blend_window((4, 4), floor=0)


# --------------------------------------------------------------------------- predict_tiled


def test_identity_predictor_stitches_back_exactly():
    rng = np.random.default_rng(0)
    image = rng.random((2, 77, 130), dtype=np.float32)
    before = image.copy()
    out = predict_tiled(image, lambda b: b, tile=32, overlap=0.3, batch_size=3, out_channels=2)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(image, before)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    tile=st.integers(4, 32),
    overlap=st.floats(0.0, 0.6),
    batch=st.integers(1, 5),
)
def test_identity_property(height, width, tile, overlap, batch):
    image = np.random.default_rng(height * 100 + width).random((height, width)).astype(np.float32)
    out = predict_tiled(image, lambda b: b, tile=tile, overlap=overlap, batch_size=batch, out_channels=1)
    np.testing.assert_allclose(out[0], image, rtol=1e-5, atol=1e-6)


def test_image_smaller_than_tile_is_padded_and_cropped():
    seen = []

    def predictor(batch):
        seen.append(batch.shape)
        return batch * 2

    image = np.ones((5, 7), np.float32)
    out = predict_tiled(image, predictor, tile=16, out_channels=1)
    assert seen == [(1, 1, 16, 16)]
    assert out.shape == (1, 5, 7) and np.allclose(out, 2)


def test_local_predictor_matches_whole_image_away_from_borders():
    """A predictor with a small receptive field gives the untiled answer away from tile edges."""
    from scipy import ndimage

    def predictor(batch):
        return np.stack([ndimage.uniform_filter(b, size=(1, 5, 5), mode="reflect") for b in batch])

    rng = np.random.default_rng(1)
    image = rng.random((1, 120, 150), dtype=np.float32)
    whole = predictor(image[np.newaxis])[0]
    tiled = predict_tiled(image, predictor, tile=48, overlap=0.25, batch_size=4, out_channels=1)
    # The Gaussian window gives tile edges (where the filter sees padding) weights near zero.
    inner = (slice(None), slice(3, -3), slice(3, -3))
    assert np.abs(tiled[inner] - whole[inner]).max() < 0.005


def test_batches_and_callback():
    calls = []
    sizes = []

    def predictor(batch):
        sizes.append(len(batch))
        return np.concatenate([batch, 1 - batch], axis=1)

    image = np.zeros((40, 40), np.float32)
    out = predict_tiled(image, predictor, tile=16, overlap=0.25, batch_size=4, out_channels=2,
                        on_tile=lambda done, total: calls.append((done, total)))
    total = len(plan_tiles((40, 40), 16, 0.25))
    assert sum(sizes) == total and max(sizes) == 4
    assert calls[-1] == (total, total)
    assert np.allclose(out[1], 1)


def test_rows_stream_in_order_and_cover_image():
    image = np.random.default_rng(2).random((1, 100, 40)).astype(np.float32)
    bands = list(predict_tiled_rows(lambda a, b: image[:, a:b], (100, 40), lambda b: b,
                                    tile=16, overlap=0.25, batch_size=2, out_channels=1))
    starts = [s for s, _ in bands]
    assert starts[0] == 0 and starts == sorted(starts) and len(bands) > 2
    stacked = np.concatenate([b for _, b in bands], axis=1)
    np.testing.assert_allclose(stacked, image, rtol=1e-5, atol=1e-6)


def test_wrong_predictor_output_is_reported():
    with pytest.raises(InputError, match="predictor returned shape"):
        predict_tiled(np.zeros((20, 20)), lambda b: b[:, :1, :4], tile=8, out_channels=1)


def test_rejects_bad_image_and_batch():
    with pytest.raises(InputError, match="image must be"):
        predict_tiled(np.zeros((2, 2, 2, 2)), lambda b: b, tile=4, out_channels=1)
    with pytest.raises(InputError, match="batch_size"):
        predict_tiled(np.zeros((8, 8)), lambda b: b, tile=4, batch_size=0, out_channels=1)


# --------------------------------------------------------------------------- halo tiling


def _box_blur(radius):
    """A predictor that sees exactly ``radius`` pixels to each side, zero beyond the tile (like a conv)."""
    from scipy import ndimage

    def predictor(batch):
        padded = np.pad(batch, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
        out = ndimage.uniform_filter(padded, size=(1, 1, 2 * radius + 1, 2 * radius + 1), mode="constant")
        return out[:, :, radius:-radius, radius:-radius] if radius else out

    return predictor


def _edge_distance(tile_slices, shape):
    """Distance of every pixel of the tile to its nearest edge that is not an image edge."""
    (sy, sx), (height, width) = tile_slices, shape
    ys, xs = np.arange(sy.start, sy.stop), np.arange(sx.start, sx.stop)
    far = np.full_like(ys, 10**9), np.full_like(xs, 10**9)
    dy = np.minimum(ys - sy.start if sy.start > 0 else far[0], sy.stop - 1 - ys if sy.stop < height else far[0])
    dx = np.minimum(xs - sx.start if sx.start > 0 else far[1], sx.stop - 1 - xs if sx.stop < width else far[1])
    return np.minimum.outer(dy, dx)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 40).map(lambda n: 8 * n),
    width=st.integers(1, 40).map(lambda n: 8 * n),
    tile=st.integers(4, 20).map(lambda n: 8 * n),
    halo=st.integers(0, 30),
)
def test_halo_plan_cores_partition_the_image_and_keep_the_halo(height, width, tile, halo):
    if tile - 2 * halo < 8:
        with pytest.raises(InputError, match="no core") if max(height, width) > tile else _no_error():
            plan_halo_tiles((height, width), tile, halo, align=8)
        return
    plan = plan_halo_tiles((height, width), tile, halo, align=8)
    covered = np.zeros((height, width), int)
    sizes = {tuple(s.stop - s.start for s in tile_slices) for tile_slices, _ in plan}
    assert len(sizes) == 1  # one tile size: tiles batch together
    for tile_slices, core in plan:
        assert all(s.start % 8 == 0 and s.start >= 0 for s in tile_slices)
        assert all(t.start <= c.start < c.stop <= t.stop for t, c in zip(tile_slices, core))
        assert tile_slices[0].stop <= height and tile_slices[1].stop <= width
        assert all(s.stop - s.start <= tile for s in tile_slices)
        covered[core] += 1
        local = tuple(slice(c.start - t.start, c.stop - t.start) for t, c in zip(tile_slices, core))
        assert _edge_distance(tile_slices, (height, width))[local].min() >= halo
    assert (covered == 1).all()


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_halo_plan_recomputes_little_on_large_images():
    # The shipped model's defaults on a CPU: tiles of at most 2048, halo 104, aligned to 16.
    for side in (2048, 4096, 8192):
        plan = plan_halo_tiles((side, side), 2048, 104, align=16)
        computed = sum((t[0].stop - t[0].start) * (t[1].stop - t[1].start) for t, _ in plan)
        assert computed / side**2 <= 1.25, side
    assert len(plan_halo_tiles((2048, 2048), 2048, 104, align=16)) == 1


def test_halo_plan_rejects_unaligned_shapes_and_bad_values():
    with pytest.raises(InputError, match="multiple of 16"):
        plan_halo_tiles((100, 100), 64, 8, align=16)
    with pytest.raises(InputError, match="halo"):
        plan_halo_tiles((64, 64), 32, -1)
    assert halo_padded_shape((100, 1, 16), 16) == (112, 16, 16)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    tile=st.sampled_from([16, 32, 48]),
    halo=st.integers(0, 4),
    batch=st.integers(1, 5),
)
def test_halo_identity_predictor_stitches_back_exactly(height, width, tile, halo, batch):
    image = np.random.default_rng(height * 100 + width).random((2, height, width)).astype(np.float32)
    out = predict_tiled(image, lambda b: b, tile=tile, tile_halo=halo, align=4, batch_size=batch, out_channels=2)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("shape", [(150, 230), (96, 96), (37, 200)])
def test_halo_tiles_match_whole_image_inference(shape):
    """With a halo of at least the predictor's reach, tiled maps equal the whole (padded) image's."""
    radius = 5
    predictor = _box_blur(radius)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    padded = np.pad(image, [(0, p - n) for n, p in zip(shape, halo_padded_shape(shape, 8))], mode="reflect")
    whole = predictor(padded[np.newaxis, np.newaxis])[0, :, : shape[0], : shape[1]]
    seen = []
    tiled = predict_tiled(image, lambda b: seen.append(b.shape) or predictor(b), tile=48, tile_halo=radius, align=8,
                          out_channels=1)
    assert len(seen) > 1  # several network calls: the image was really tiled
    assert np.abs(tiled - whole).max() < 1e-6
    # One pixel short of the reach, cut edges show (align 1: no slack from rounding the starts).
    short = predict_tiled(padded, predictor, tile=48, tile_halo=radius - 1, align=1, out_channels=1)
    whole_padded = predictor(padded[np.newaxis, np.newaxis])[0]
    assert np.abs(short - whole_padded).max() > 1e-3


def test_halo_rows_stream_in_order_and_match_in_memory():
    image = np.random.default_rng(3).random((1, 200, 72)).astype(np.float32)
    predictor = _box_blur(3)
    bands = list(predict_tiled_rows(lambda a, b: image[:, a:b], (200, 72), predictor, tile=40, tile_halo=3,
                                    align=8, batch_size=2, out_channels=1))
    starts = [s for s, _ in bands]
    assert starts[0] == 0 and starts == sorted(starts) and len(bands) > 2
    stacked = np.concatenate([b for _, b in bands], axis=1)
    np.testing.assert_array_equal(stacked, predict_tiled(image, predictor, tile=40, tile_halo=3, align=8,
                                                         out_channels=1))


@pytest.mark.parametrize("height, padded", [(10, 16), (3, 16), (1, 8), (16, 16)])
def test_reflect_rows_matches_numpy_pad(height, padded):
    image = np.random.default_rng(height).random((2, height, 5))
    mode = "reflect" if height > 1 else "edge"
    read = reflect_rows(lambda a, b: image[:, a:b], height, padded, mode=mode)
    expected = np.pad(image, ((0, 0), (0, padded - height), (0, 0)), mode=mode)
    for start, stop in [(0, padded), (max(0, height - 2), padded), (height, padded), (0, height)]:
        if stop > start:
            np.testing.assert_array_equal(read(start, stop), expected[:, start:stop])
