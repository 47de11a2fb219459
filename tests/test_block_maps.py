"""Dask blocks get the in-memory run's maps: the same tile grid, blend and resize, whatever the block size.

Each block's maps (:func:`segtool.distributed.block_plan.block_maps`, from
only the pixels its region reads) are put together and compared with
:func:`segtool.infer.predict.predict_image`'s maps of the whole image, with
the shipped model: halo tiles (the default), blended tiles (``overlap``),
and resized images (``scale`` below and above 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segtool.distributed.block_plan import block_maps, plan_blocks, tile_grid
from segtool.pipeline.options import TileOptions
from segtool.synthetic import make_nuclei_image

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "sample_data" / "images"


@pytest.fixture(scope="module")
def model():
    import torch

    from segtool.model.modelfile import load_model
    from segtool.infer.predict import find_packaged_model

    torch.set_num_threads(1)  # the machine is shared
    return load_model(find_packaged_model())


@pytest.fixture(scope="module")
def sample_image() -> np.ndarray:
    import tifffile

    path = next(p for p in sorted(SAMPLE_IMAGES.glob("*.tif")) if "4ee5" in p.name)
    return tifffile.imread(path)[:360, :520]


@pytest.fixture(scope="module")
def synthetic_image() -> np.ndarray:
    image, _ = make_nuclei_image((300, 410), n_nuclei=40, seed=3, touching=0.3)
    return image


def _assembled(image: np.ndarray, model, tiling: TileOptions, block: int, halo: int, scale: float) -> np.ndarray:
    """The maps of every block's core, put together: each block sees only ``normalized[plan.region]``."""
    from segtool.infer.network import make_predictor, prepared_net
    from segtool.infer.predict import normalize_for_model

    normalized = normalize_for_model(image, model)[0]
    grid = tile_grid(model.config, image.shape, tiling, scale=scale)
    plans, _ = plan_blocks(image.shape, block, halo, grid, seam_reach=3)
    predictor = make_predictor(prepared_net(model), model.config.target)
    out = np.full((model.config.out_channels,) + image.shape, np.nan, np.float32)
    for row in plans:
        for plan in row:
            maps = block_maps(normalized[plan.region], plan, grid, predictor, out_channels=model.config.out_channels)
            window = tuple(slice(r.start + w.start, r.start + w.stop) for r, w in zip(plan.region, plan.window))
            assert maps.shape[1:] == tuple(w.stop - w.start for w in window)
            core = tuple(slice(w.start + c.start, w.start + c.stop) for w, c in zip(window, plan.core))
            out[(slice(None),) + core] = maps[(slice(None),) + plan.core]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("which", "tiling", "block", "halo"),
    [
        ("sample", TileOptions(), 200, 32),  # defaults: one halo tile holds the image
        ("sample", TileOptions(tile=256), 128, 32),  # several halo tiles, blocks smaller than a tile
        ("sample", TileOptions(tile=256, tile_halo=48), 333, 0),
        ("synthetic", TileOptions(tile=128, overlap=0.25), 150, 20),  # blended tiles
        ("sample", TileOptions(tile=256, scale=0.6), 128, 32),  # shrunk: blurred, then interpolated
        ("synthetic", TileOptions(tile=256, scale=1.7), 100, 24),  # enlarged; the maps are shrunk back
    ],
)
def test_block_maps_equal_the_in_memory_maps(model, sample_image, synthetic_image, which, tiling, block, halo):
    from segtool.infer.predict import predict_image

    image = sample_image if which == "sample" else synthetic_image
    expected = predict_image(image, model, tiling=tiling).maps
    got = _assembled(image, model, tiling, block, halo, tiling.scale)
    assert not np.isnan(got).any()  # the cores cover the image
    assert float(np.abs(got - expected).max()) <= 1e-3


def test_blocks_read_only_what_their_tiles_need(model):
    grid = tile_grid(model.config, (5000, 300), TileOptions(tile=512), scale=0.5)
    plans, _ = plan_blocks((5000, 300), 1000, 64, grid, seam_reach=3)
    middle = plans[2][0]  # rows 2000-3000 of the image
    assert middle.region[0].start > 1000 and middle.region[0].stop < 3500  # not the whole image
    assert middle.region[1] == slice(0, 300)
    assert middle.net.scaled[0].start >= 0 and middle.net.scaled[0].stop <= 2500


# --------------------------------------------------------------------------- bands honour scale too


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.6, 1.7])
def test_bands_equal_the_in_memory_run_at_a_scale(model, sample_image, scale):
    from segtool.metrics import match_labels
    from segtool.infer.bands import predict_label_bands
    from segtool.infer.predict import normalize_for_model, predict_image

    tiling = TileOptions(tile=256, scale=scale)
    expected = predict_image(sample_image, model, tiling=tiling)
    normalized = normalize_for_model(sample_image, model)
    bands = list(predict_label_bands(lambda a, b: normalized[:, a:b], sample_image.shape, model, tiling=tiling,
                                     band_rows=96, halo=40, keep_maps=True))
    maps = np.concatenate([band.maps for band in bands], axis=1)
    labels = np.concatenate([band.labels for band in bands])
    assert maps.shape == expected.maps.shape and labels.shape == sample_image.shape  # back at the image's size
    assert float(np.abs(maps - expected.maps).max()) <= 1e-3
    assert match_labels(expected.labels, labels, thresholds=(0.5,)).f1[0] == 1.0


@pytest.mark.slow
def test_cli_bands_and_blocks_report_the_estimated_size(tmp_path, sample_image):
    import json

    import tifffile
    from typer.testing import CliRunner

    from segtool.cli.application import app

    source = tmp_path / "big.tif"
    tifffile.imwrite(source, sample_image, tile=(64, 64))
    records = {}
    for mode, extra in (("memory", []), ("bands", ["--bands", "--band-rows", "128"]),
                        ("blocks", ["--block-size", "256", "--halo", "32", "--jobs", "1"])):
        result = CliRunner().invoke(app, ["predict", str(source), "-o", str(tmp_path / mode), "--json", "--threads", "1",
                                          *extra])
        assert result.exit_code == 0, result.output
        records[mode] = json.loads(result.stdout)
    for mode in ("bands", "blocks"):  # the image is smaller than the sample: the same estimate as in memory
        assert records[mode]["diameter_source"] == "estimated"
        assert records[mode]["scale"] == pytest.approx(records["memory"]["scale"], rel=0.02)
        assert records[mode]["diameter"] == pytest.approx(records["memory"]["diameter"], rel=0.05)
