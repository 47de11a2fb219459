"""3-D prediction with a 2-D network: plane stitching, batching across planes, streaming to file, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.errors import InputError
from segtool.metrics import match_labels
from segtool.pipeline.options import TileOptions
from segtool.model.modelfile import LoadedModel, save_model
from segtool.volume.io import read_label_volume
from segtool.volume.predict import StackPredictOptions, predict_stack, predict_stack_file, predict_stack_maps
from segtool.volume.stitch import PlaneStitcher, stitch_planes

from helpers import dome_unet

runner = CliRunner()
SHAPE = (12, 40, 48)
Z_SPACING = 2.0
BALLS = [((5.5, 12, 12), 8.0), ((6.0, 26, 32), 9.0), ((3.0, 30, 10), 6.0)]


@pytest.fixture(scope="module")
def dome_model():
    net, config = dome_unet()
    return LoadedModel(net=net, config=config)


@pytest.fixture(scope="module")
def balls():
    """Dome-shaped balls (round in physical space, planes 2 apart) and their labels (the 0.3 level set)."""
    z, y, x = np.indices(SHAPE, dtype=float)
    image = np.zeros(SHAPE, np.float32)
    truth = np.zeros(SHAPE, np.uint16)
    for k, ((cz, cy, cx), radius) in enumerate(BALLS, start=1):
        r = np.sqrt(((z - cz) * Z_SPACING) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / radius
        dome = np.sqrt(np.clip(1 - r**2, 0, None)).astype(np.float32)
        image = np.maximum(image, dome)
        truth[dome > 0.3] = k
    return (image * 1000).astype(np.uint16), truth


def test_stitcher_links_by_iou_one_to_one():
    stitcher = PlaneStitcher(0.5)
    first = stitcher.add(np.array([[1, 1, 1, 1, 0, 2, 2, 2]]))
    # 7 continues 1 (IoU 0.75); 8 overlaps 1 too, but 1 is taken: new; 9 has IoU 1/3 with 2: new.
    second = stitcher.add(np.array([[7, 7, 7, 8, 0, 0, 0, 9]]))
    assert first.tolist() == [[1, 1, 1, 1, 0, 2, 2, 2]]
    assert second.tolist() == [[1, 1, 1, 3, 0, 0, 0, 4]]
    assert stitcher.n_labels == 4
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        PlaneStitcher(0)


def test_stitch_planes_chains_and_restarts():
    planes = np.zeros((4, 1, 6), int)
    planes[0, 0, 0:3] = 5
    planes[1, 0, 1:4] = 2  # IoU 0.5 with the plane above
    planes[2, 0, 3:6] = 1  # IoU 0.2: a new object
    planes[3, 0, 3:6] = 4
    out = stitch_planes(planes, threshold=0.5)
    assert out[:, 0].tolist() == [[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2]]
    assert out.dtype == np.uint16


def test_batching_across_planes_gives_the_same_maps(dome_model, balls):
    image, _ = balls
    one = list(predict_stack_maps(list(image), dome_model, norm=(0, 1000),
                                  options=StackPredictOptions(tiling=TileOptions(batch_size=1))))
    many = list(predict_stack_maps(list(image), dome_model, norm=(0, 1000),
                                   options=StackPredictOptions(tiling=TileOptions(batch_size=5))))
    assert len(one) == len(many) == SHAPE[0]
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Planes larger than a tile are tiled plane by plane: same maps as the batched path on a crop.
    tiled = list(predict_stack_maps(list(image), dome_model, norm=(0, 1000),
                                    options=StackPredictOptions(tiling=TileOptions(tile=16))))
    assert tiled[5].shape == one[5].shape


@pytest.mark.parametrize("mode", ["stitch", "watershed"])
def test_predict_stack_finds_the_balls(dome_model, balls, mode):
    image, truth = balls
    labels = predict_stack(image, dome_model, z_spacing=Z_SPACING, options=StackPredictOptions(mode=mode))
    counts = match_labels(truth, labels, thresholds=[0.5, 0.8])
    assert int(labels.max()) == 3
    assert counts.tp.tolist() == [3, 3]


@pytest.mark.parametrize("mode", ["stitch", "watershed"])
def test_stack_file_gives_a_calibrated_label_tiff(tmp_path, dome_model, balls, mode):
    """From file to file (stitch streams plane by plane) with the same labels as in memory."""
    image, truth = balls
    source = tmp_path / "s.tif"
    tifffile.imwrite(source, image, imagej=True, resolution=(4.0, 4.0), metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
    out = tmp_path / "out" / "s_labels.tif"
    seen = []
    options = StackPredictOptions(mode=mode)
    figures = predict_stack_file(source, dome_model, out, on_plane=lambda done, total: seen.append((done, total)),
                                 overlay_path=tmp_path / "out" / "s_overlay.png", options=options)
    assert figures["objects"] == 3 and figures["mode"] == mode and figures["planes"] == SHAPE[0] and figures["z_spacing"] == 2.0
    assert seen[-1] == (SHAPE[0], SHAPE[0])
    labels = read_label_volume(out)
    assert labels.voxel_size == (0.5, 0.25, 0.25) and labels.unit == "micron"
    expected = predict_stack(image, dome_model, z_spacing=2.0, options=options)
    np.testing.assert_array_equal(labels.data, expected)
    # Only the results: no scratch planes left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["s_labels.tif", "s_overlay.png"]


def test_cli_predict_on_a_stack(tmp_path, balls):
    image, truth = balls
    net, config = dome_unet()
    model_path = save_model(tmp_path / "dome.pt", net, config)
    tifffile.imwrite(tmp_path / "s.tif", image, imagej=True, metadata={"axes": "ZYX"})
    result = runner.invoke(app, ["predict", str(tmp_path / "s.tif"), "-m", str(model_path), "-o", str(tmp_path / "o"),
                                 "--z-spacing", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["objects"] == 3 and record["mode"] == "watershed" and record["voxel_size"] == [2.0, 1.0, 1.0]
    labels = read_label_volume(record["outputs"]["labels"]).data
    assert match_labels(truth, labels, thresholds=[0.5]).tp.tolist() == [3]
    # --plane keeps the 2-D meaning.
    result = runner.invoke(app, ["predict", str(tmp_path / "s.tif"), "-m", str(model_path), "-o", str(tmp_path / "p"),
                                 "--plane", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    assert tifffile.imread(json.loads(result.stdout)["outputs"]["labels"]).shape == SHAPE[1:]
    # 2-D-only extras are refused with one line, nothing written.
    result = runner.invoke(app, ["predict", str(tmp_path / "s.tif"), "-m", str(model_path), "-o", str(tmp_path / "q"),
                                 "--save-prob"])
    assert result.exit_code == 1 and "--save-prob is not available for Z stacks" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "q" / "s_labels.tif").exists()


def test_auto_mode_switches_to_stitching_for_big_stacks():
    from segtool.volume.predict import WATERSHED_MAX_VOXELS

    assert StackPredictOptions().resolved(64 * 256 * 256) == "watershed"
    assert StackPredictOptions().resolved(WATERSHED_MAX_VOXELS + 1) == "stitch"
    assert StackPredictOptions(mode="watershed").resolved(10**12) == "watershed"
    with pytest.raises(InputError, match="3-D mode"):
        StackPredictOptions(mode="2d")
