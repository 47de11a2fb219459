"""The network-and-blend stage shared by every schedule."""

from __future__ import annotations

import numpy as np
import pytest

from segtool.errors import InputError
from segtool.pipeline.blend import RowBlender, add_weighted, predict_in_batches


def test_batches_keep_order_and_size():
    image = np.arange(2 * 8 * 5, dtype=np.float32).reshape(2, 8, 5)
    seen = []

    def predictor(batch):
        seen.append(batch.shape[0])
        return batch[:, :1] * 2

    out = list(predict_in_batches([0, 2, 4, 6], lambda y: image[:, y : y + 2], predictor, batch_size=3, out_channels=1))
    assert seen == [3, 1] and [list(b) for b, _ in out] == [[0, 2, 4], [6]]
    np.testing.assert_array_equal(out[1][1][0, 0], image[0, 6:8] * 2)


def test_batches_refuse_a_wrong_predictor():
    with pytest.raises(InputError, match="predictor returned shape"):
        list(predict_in_batches([0], lambda y: np.zeros((1, 4, 4)), lambda b: b, batch_size=1, out_channels=2))


def test_row_blender_equals_one_big_accumulator():
    rng = np.random.default_rng(3)
    window = rng.random((4, 3)).astype(np.float32) + 0.1
    places = [(slice(y, y + 4), slice(x, x + 3)) for y in (0, 3, 6) for x in (0, 2)]
    maps = rng.random((len(places), 2, 4, 3)).astype(np.float32)
    acc, weight = np.zeros((2, 10, 5), np.float32), np.zeros((10, 5), np.float32)
    add_weighted(acc, weight, maps, places, window)
    blender = RowBlender(2, 5, capacity=4)  # too small: it must grow
    bands = []
    for k in range(0, len(places), 2):
        blender.add(places[k : k + 2], maps[k : k + 2], window)
        start = blender.base
        band = blender.finish(places[k + 2][0].start if k + 2 < len(places) else 10)
        if band is not None:
            bands.append((start, band))
    assert [s for s, _ in bands] == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([b for _, b in bands], axis=1), acc / weight)
    assert blender.finish(10) is None
