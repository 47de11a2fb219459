"""`segtool predict` through the CLI: outputs, JSON, large-image bands, errors, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from segtool.io import read_labels
from segtool.model.modelfile import save_model

from helpers import dome_unet, invoke


def _domes(shape, centres, radius=8):
    yy, xx = np.indices(shape)
    image = np.zeros(shape, np.float32)
    for r, c in centres:
        image = np.maximum(image, np.sqrt(np.clip(1 - (np.hypot(yy - r, xx - c) / radius) ** 2, 0, None)))
    return image


def _matched_iou(a, b):
    """IoU of each object of ``a`` with its best match in ``b``, requiring a one-to-one match."""
    ious, partners = [], set()
    for i in range(1, int(a.max()) + 1):
        mask = a == i
        j = np.bincount(b[mask]).argmax()
        partners.add(j)
        ious.append(np.sum(mask & (b == j)) / np.sum(mask | (b == j)) if j else 0.0)
    assert len(partners) == int(a.max()) == int(b.max())
    return np.array(ious)


@pytest.fixture
def model_file(tmp_path):
    net, config = dome_unet()
    path = tmp_path / "nuclei.pt"
    save_model(path, net, config, metadata={"test": True})
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, shape in enumerate([(96, 128), (45, 70)]):
        centres = rng.integers(10, min(shape) - 10, size=(6, 2))
        image = (_domes(shape, centres) * 200 + 10).astype(np.uint8)
        path = folder / f"img{i}.tif"
        tifffile.imwrite(path, image)
        paths.append(path)
    return paths


def test_predict_writes_labels_and_prints_paths(tmp_path, model_file, images):
    out = tmp_path / "out"
    result = invoke("predict", images[0].parent, "-m", model_file, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "img0_labels.tif"), str(out / "img1_labels.tif")]
    labels = read_labels(out / "img0_labels.tif").data
    assert labels.dtype == np.uint16 and labels.shape == (96, 128)
    assert 1 <= labels.max() <= 6


def test_predict_json_and_extra_outputs(tmp_path, model_file, images):
    result = invoke("predict", images[0], "-m", model_file, "-o", tmp_path / "o", "--json",
                    "--save-prob", "--save-overlay", "--tile", "32", "--overlap", "0.5")
    assert result.exit_code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["status"] == "done" and record["bands"] == 0
    assert {"objects", "tiles", "seconds", "predict_seconds", "shape"} <= set(record)
    assert record["tiles"] == 35 and record["objects"] == read_labels(record["outputs"]["labels"]).data.max()
    prob = tifffile.imread(record["outputs"]["prob"])
    assert prob.dtype == np.float32 and prob.shape == (2, 96, 128)
    from PIL import Image

    with Image.open(record["outputs"]["overlay"]) as overlay:
        assert overlay.size == (128, 96) and overlay.mode == "RGB"


def test_bands_give_the_same_objects_as_in_memory(tmp_path, model_file):
    rng = np.random.default_rng(1)
    image = (_domes((260, 190), rng.integers(8, 182, size=(40, 2))) * 3000 + 200).astype(np.uint16)
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, image, tile=(64, 64), compression="zlib")
    r1 = invoke("predict", src, "-m", model_file, "-o", tmp_path / "mem", "--no-bands", "--json", "--tile", "64")
    r2 = invoke("predict", src, "-m", model_file, "-o", tmp_path / "band", "--bands", "--band-rows", "64", "--tile", "64",
                "--halo", "16", "--json", "--save-prob", "--save-overlay")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.stderr + r2.stderr
    mem, band = json.loads(r1.stdout), json.loads(r2.stdout)
    assert band["bands"] == 5 and band["objects"] == mem["objects"] > 10 and band["tiles"] == mem["tiles"]
    a = tifffile.imread(mem["outputs"]["labels"])
    with tifffile.TiffFile(band["outputs"]["labels"]) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        b = tif.asarray()
    # The same objects; only watershed ties between touching objects may fall differently.
    assert _matched_iou(a, b).min() > 0.9
    prob = tifffile.imread(band["outputs"]["prob"])
    assert prob.shape == (2, 260, 190) and prob.dtype == np.float32


def test_scale_and_diameter(tmp_path, images):
    net, config = dome_unet(postprocess={"min_size": 5, "median_diameter": 16.0})
    model = tmp_path / "m.pt"
    save_model(model, net, config, metadata={})
    result = invoke("predict", images[0], "-m", model, "-o", tmp_path / "a", "--diameter", "32", "--json")
    assert result.exit_code == 0, result.stderr
    assert read_labels(json.loads(result.stdout)["outputs"]["labels"]).data.shape == (96, 128)
    result = invoke("predict", images[0], "-m", model, "--scale", "0.5", "--diameter", "32")
    assert result.exit_code == 2 and "not both" in result.stderr


def test_without_model_explains_what_to_do(tmp_path, images, monkeypatch):
    # Simulate an installation without the packaged model (this checkout ships one).
    import importlib.resources

    real_files = importlib.resources.files
    monkeypatch.setattr(importlib.resources, "files", lambda pkg: real_files(pkg).joinpath("no-such-folder"))
    result = invoke("predict", images[0], "-o", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "segtool: error: no pretrained model is installed in this segtool; pass -m MODEL (train one with `segtool train`)"
    )
    assert result.stdout == ""


def test_bad_model_file_is_one_line(tmp_path, images):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    result = invoke("predict", images[0], "-m", bad, "-o", tmp_path)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segtool: error: {bad}: ") and "model" in lines[0]


def test_bad_input_fails_alone(tmp_path, model_file, images):
    broken = tmp_path / "images" / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    result = invoke("predict", images[0], broken, tmp_path / "missing.tif", "-m", model_file, "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [str(tmp_path / "o" / "img0_labels.tif")]
    assert f"segtool: error: {broken}:" in result.stderr
    assert f"segtool: error: {tmp_path / 'missing.tif'}: no such file" in result.stderr


def test_existing_output_needs_overwrite(tmp_path, model_file, images):
    assert invoke("predict", images[1], "-m", model_file, "-o", tmp_path / "o").exit_code == 0
    again = invoke("predict", images[1], "-m", model_file, "-o", tmp_path / "o")
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    assert invoke("predict", images[1], "-m", model_file, "-o", tmp_path / "o", "--overwrite", "--tta").exit_code == 0


def test_wrong_input_channels_and_bad_tile(tmp_path, images):
    net, config = dome_unet(in_channels=2)
    model = tmp_path / "two.pt"
    save_model(model, net, config, metadata={})
    result = invoke("predict", images[0], "-m", model, "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert "model expects 2 input channels, the image has 1" in result.stderr
    net, config = dome_unet()
    save_model(tmp_path / "one.pt", net, config, metadata={})
    result = invoke("predict", images[0], "-m", tmp_path / "one.pt", "--tile", "30")
    assert result.exit_code == 2 and "multiple of 4" in result.stderr


def test_rgb_input_and_channel(tmp_path, model_file):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 1] = (_domes((40, 40), [(20, 20)], radius=10) * 250).astype(np.uint8)
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    for extra in ([], ["--channel", "1"], ["--bands", "--channel", "1"]):
        result = invoke("predict", src, "-m", model_file, "-o", tmp_path / "o", "--overwrite", "--json", *extra)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["objects"] == 1
    result = invoke("predict", src, "-m", model_file, "-o", tmp_path / "o", "--overwrite", "--channel", "5")
    assert result.exit_code == 1 and "out of range" in result.stderr


def test_split_height_option_overrides_the_model(tmp_path):
    # Two overlapping domes: with a seed threshold this low their seed region is one blob with a neck.
    image = (_domes((60, 80), [(30, 25), (30, 44)], radius=11) * 200 + 10).astype(np.uint8)
    src = tmp_path / "pair.tif"
    tifffile.imwrite(src, image)
    counts = {}
    for name, postprocess, extra in [
        ("plain", {"min_size": 5, "seed_threshold": 0.02}, []),
        ("cli", {"min_size": 5, "seed_threshold": 0.02}, ["--split-height", "1"]),
        ("model", {"min_size": 5, "seed_threshold": 0.02, "split_height": 1.0}, []),
        ("off", {"min_size": 5, "seed_threshold": 0.02, "split_height": 1.0}, ["--split-height", "0"]),
    ]:
        net, config = dome_unet(postprocess=postprocess)
        model = tmp_path / f"{name}.pt"
        save_model(model, net, config, metadata={})
        result = invoke("predict", src, "-m", model, "-o", tmp_path / name, "--json", *extra)
        assert result.exit_code == 0, result.stderr
        counts[name] = json.loads(result.stdout)["objects"]
    assert counts == {"plain": 1, "cli": 2, "model": 2, "off": 1}
