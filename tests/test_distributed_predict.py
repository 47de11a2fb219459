"""Tests for segtool.distributed.big_predict: block-wise U-Net prediction and the seam merge.

The merge is checked exactly with an oracle segmenter (each block labels the
true objects it sees, so an object cut by a window comes apart and must be
joined again); the U-Net path against the in-memory ``predict_image`` on a
mosaic of the real sample images, on the synchronous and threaded
schedulers and on a two-process ``distributed.LocalCluster``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from segtool.distributed.big_predict import (
    _predict_with,
    predict_blocks,
)
from segtool.errors import InputError
from segtool.metrics import match_labels
from segtool.pipeline.options import ObjectOptions, TileOptions
from segtool.pipeline.seams import overlap_pairs
from segtool.synthetic import make_nuclei_image

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "sample_data" / "images"


# --------------------------------------------------------------------------- helpers and fixtures


class _Oracle:
    """Segmenter that labels the true objects visible in a block's window (connected pieces apart)."""

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth

    def __call__(self, normalized, plan):
        from skimage.measure import label

        window = self.truth[plan.region][plan.window]
        # A different numbering in every window, as a real segmenter would give.
        return label(window, background=0, connectivity=1).astype(np.uint16)


def _check_consecutive(labels: np.ndarray, n_objects: int) -> None:
    assert np.array_equal(np.unique(labels), np.arange(n_objects + 1))


def _check_same_objects(truth: np.ndarray, labels: np.ndarray) -> None:
    counts = match_labels(truth, labels, thresholds=(1.0,))
    assert counts.n_pred == counts.n_true
    assert counts.tp[0] == counts.n_true, f"{counts.n_true - counts.tp[0]} objects differ"


def _split_objects(reference: np.ndarray, labels: np.ndarray, *, share: float = 0.1) -> int:
    """Reference objects of which two or more output objects each hold at least ``share``."""
    both = (reference > 0) & (labels > 0)
    pairs, counts = np.unique(
        np.stack([reference[both].astype(np.int64), labels[both].astype(np.int64)]), axis=1, return_counts=True
    )
    big = counts >= share * np.bincount(reference.ravel())[pairs[0]]
    return int(np.count_nonzero(np.bincount(pairs[0][big]) > 1))


def _truth_image(seed: int, *, touching: float) -> np.ndarray:
    """Synthetic nuclei plus objects larger than any halo below: a long bar, an L and a big disk."""
    from skimage.draw import disk
    from skimage.measure import label

    _, truth = make_nuclei_image((150, 190), n_nuclei=45, seed=seed, touching=touching, noise=0)
    truth = truth.astype(np.int32)
    top = int(truth.max())
    truth[70:75, 3:185] = top + 1  # crosses every vertical block edge
    truth[10:120, 150:155] = top + 2  # an L: down, then right
    truth[115:120, 150:188] = top + 2
    truth[disk((40, 60), 28, shape=truth.shape)] = top + 3
    # Painting over nuclei can cut them in two: number connected pieces as objects.
    return label(truth, background=0, connectivity=1).astype(np.uint16)


@pytest.fixture(scope="module")
def model_path() -> Path:
    from segtool.infer.predict import find_packaged_model

    return find_packaged_model()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The machine is shared: keep the network on one core (the workers get ``threads=1``)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """512 x 768 uint8 mosaic of the real sample images (six 256 x 256 pieces)."""
    import tifffile

    images = {path.stem.split("_")[1][:4]: tifffile.imread(path) for path in sorted(SAMPLE_IMAGES.glob("*.tif"))}
    a, b, c, d = images["29dd"], images["4bf6"], images["2c84"], images["4ee5"]
    return np.block([[a, b, c[:256, :256]], [d[:256, :256], d[256:512, 256:512], d[:256, 440:696]]])


@pytest.fixture(scope="module")
def reference(mosaic, model_path) -> np.ndarray:
    """In-memory tiled prediction of the mosaic."""
    from segtool.model.modelfile import load_model
    from segtool.infer.predict import predict_image

    return predict_image(mosaic, load_model(model_path)).labels


def _check_against_reference(reference: np.ndarray, result, labels: np.ndarray) -> float:
    assert labels.dtype == np.uint32
    _check_consecutive(labels, result.n_objects)
    assert _split_objects(reference, labels) == 0
    counts = match_labels(reference, labels, thresholds=(0.5,))
    assert counts.f1[0] >= 0.99, f"F1 {counts.f1[0]:.4f} against the in-memory run"
    assert counts.mean_matched_iou[0] >= 0.98
    return float(counts.f1[0])


# --------------------------------------------------------------------------- merge, with an oracle segmenter


@pytest.mark.parametrize(("block", "halo"), [(16, 1), (24, 5), (37, 12), (50, 30), (16, 40)])
def test_merge_restores_every_object(block, halo):
    truth = _truth_image(1, touching=0.5)
    with dask.config.set(scheduler="synchronous"):
        result = _predict_with(
            da.from_array(truth, chunks=60), _Oracle(truth), block=block, halo=halo, norm=(0, 100), min_size=0
        )
        labels = result.labels.compute()
    _check_consecutive(labels, result.n_objects)
    _check_same_objects(truth, labels)  # touching objects stay apart, objects wider than the halo stay whole
    assert result.joined > 10
    assert result.blocks == len(range(0, 150, block)) * len(range(0, 190, block))


def test_merge_without_halo_joins_separate_objects():
    truth = _truth_image(2, touching=0.0)
    with dask.config.set(scheduler="synchronous"):
        result = _predict_with(
            da.from_array(truth, chunks=64), _Oracle(truth), block=32, halo=0, norm=(0, 100), min_size=0
        )
        labels = result.labels.compute()
    _check_consecutive(labels, result.n_objects)
    _check_same_objects(truth, labels)


def test_merge_drops_assembled_objects_below_min_size():
    truth = np.zeros((40, 40), np.uint16)
    truth[10:12, 18:22] = 1  # 8 pixels across the edge at x = 20
    truth[25:35, 5:35] = 2  # 300 pixels
    with dask.config.set(scheduler="synchronous"):
        result = _predict_with(
            da.from_array(truth, chunks=20), _Oracle(truth), block=20, halo=4, norm=(0, 100), min_size=9
        )
        labels = result.labels.compute()
    assert result.n_objects == 1
    assert np.array_equal(labels, (truth == 2).astype(np.uint32))


def test_seam_pairs_need_both_labels_at_the_edge_and_a_shared_majority():
    # Two blocks' labels on the same 4-row strip; the edge lies between rows 1 and 2.
    first = np.array(
        [[1, 1, 2, 2, 0, 3],
         [1, 1, 2, 2, 0, 0],
         [1, 1, 2, 2, 0, 0],
         [1, 1, 0, 0, 0, 0]]
    )  # fmt: skip
    second = np.array(
        [[5, 5, 0, 0, 0, 7],
         [5, 5, 0, 0, 0, 0],
         [5, 5, 0, 6, 6, 0],
         [5, 5, 0, 6, 6, 0]]
    )  # fmt: skip
    a, b = overlap_pairs(first, second, slice(1, 2), slice(2, 3))
    # 1~5 share all 8 pixels; 2~6 reach the edge but share 1 of 6's 4 pixels (neighbours that touch);
    # 3~7 coincide but neither reaches the edge in its own core.
    assert list(zip(a.tolist(), b.tolist())) == [(1, 5)]


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("shape", "options", "message"),
    [
        ((256, 256), {"block": 0}, "block must be an integer >= 1"),
        ((256, 256), {"halo": -1}, "halo must be an integer >= 0"),
        ((2, 64, 64), {}, "image must be 2-D"),
        ((256, 256), {"objects": ObjectOptions(prob_threshold=2.0)}, "prob_threshold"),
        ((256, 256), {"tiling": TileOptions(tile=100)}, "multiple of 16"),
    ],
)
def test_bad_arguments_raise_input_error(model_path, shape, options, message):
    with pytest.raises(InputError, match=message):
        predict_blocks(da.zeros(shape, dtype=np.uint8, chunks=64), model_path, **options)


# --------------------------------------------------------------------------- U-Net against the in-memory run


@pytest.mark.slow
def test_unet_blocks_match_in_memory(mosaic, reference, model_path):
    with dask.config.set(scheduler="synchronous"):
        result = predict_blocks(da.from_array(mosaic, chunks=(100, 150)), model_path, block=128, halo=32, threads=1)
        labels = result.labels.compute()
    assert result.labels.chunks == ((128,) * 4, (128,) * 6)
    assert result.blocks == 24
    assert result.joined >= 10  # many objects cross block edges and corners
    # the blocks run the in-memory run's tile grid: the same maps, so every object is found again
    assert _check_against_reference(reference, result, labels) == 1.0


@pytest.fixture(scope="module")
def float_image(mosaic) -> np.ndarray:
    """A 320 x 480 float32 piece of the mosaic (percentiles from the subsample path; here every pixel)."""
    return mosaic[:320, 96:576].astype(np.float32) * 0.37 + 5


@pytest.fixture(scope="module")
def float_reference(float_image, model_path) -> np.ndarray:
    from segtool.model.modelfile import load_model
    from segtool.infer.predict import predict_image

    return predict_image(float_image, load_model(model_path)).labels


@pytest.mark.slow
def test_unet_blocks_uneven_float_image_threads(float_image, float_reference, model_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        result = predict_blocks(da.from_array(float_image, chunks=100), model_path, block=128, halo=32, threads=1)
        labels = result.labels.compute()
    assert result.labels.chunks == ((128, 128, 64), (128, 128, 128, 96))
    _check_against_reference(float_reference, result, labels)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_unet_blocks_on_local_cluster_write_zarr(client, float_image, float_reference, model_path, tmp_path):
    """Across processes: the tasks pickle, each worker loads the model, and workers write the labels to Zarr."""
    result = predict_blocks(da.from_array(float_image, chunks=100), model_path, block=128, halo=24, threads=1)
    store = str(tmp_path / "labels.zarr")
    result.labels.to_zarr(store)
    labels = da.from_zarr(store).compute()
    assert result.blocks == 12 and result.joined >= 5
    _check_against_reference(float_reference, result, labels)
