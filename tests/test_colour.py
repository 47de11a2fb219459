"""Colour input (``--channels rgb``): reading, config, training, prediction, overlays; shipped model names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tifffile
import torch

from segtool.errors import InputError, ModelError
from segtool.io import read_image
from segtool.overlay import outline_overlay
from segtool.model.config import UNetConfig
from segtool.train.finetune import FIRST_CONV
from segtool.model.modelfile import load_model

from helpers import disk_training_set, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1"]


def stained_set(root: Path, count: int = 4, *, seed: int = 0, grey_too: bool = True) -> Path:
    """Purple disks on pink (RGB files), and one grey file, with their masks."""
    def paint(labels, rng, index):
        inside = labels > 0
        rgb = np.empty((48, 48, 3), np.float64)
        for c, (pink, purple) in enumerate(zip((240, 180, 210), (90, 40, 150))):
            rgb[..., c] = np.where(inside, purple, pink) + rng.normal(0, 4, labels.shape)
        image = rgb.clip(0, 255).astype(np.uint8)
        return image.mean(axis=2).astype(np.uint8) if grey_too and index == count - 1 else image

    return disk_training_set(root, paint, count=count, seed=seed)


def test_colour_read_keeps_rgb_planes_and_repeats_grey(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    got = read_image(tmp_path / "rgb.tif", colour=True).data
    assert got.shape == (3, 5, 7) and got.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(got[c], rgb[..., c])
    # the default reading still averages
    assert np.allclose(read_image(tmp_path / "rgb.tif").data, rgb.mean(axis=2))
    grey = rgb[..., 0]
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    got = read_image(tmp_path / "grey.tif", colour=True).data
    assert got.shape == (3, 5, 7) and all(np.array_equal(got[c], grey) for c in range(3))
    with pytest.raises(InputError, match="no --channel"):
        read_image(tmp_path / "rgb.tif", colour=True, channel=1)


def test_config_channels_mode_is_checked_and_old_configs_read_as_grey():
    assert UNetConfig(in_channels=3, channels="rgb").to_dict()["channels"] == "rgb"
    with pytest.raises(InputError, match="needs in_channels 3"):
        UNetConfig(channels="rgb")
    with pytest.raises(InputError, match="channels must be one of"):
        UNetConfig(channels="cmyk")
    old = UNetConfig().to_dict()
    del old["channels"]
    assert UNetConfig.from_dict(old).channels == "grey"


def test_colour_overlay_keeps_the_stain_hue():
    image = np.zeros((3, 8, 8), np.uint8)
    image[0], image[1], image[2] = 200, 50, 120  # purple-pink everywhere
    image[:, 0, 0] = 0  # a dark pixel, so the stretch has a range
    labels = np.zeros((8, 8), np.uint16)
    overlay = outline_overlay(image, labels)
    assert overlay.shape == (8, 8, 3)
    red, green, blue = (int(v) for v in overlay[4, 4])
    assert red > blue > green  # the hue survives the display stretch
    with pytest.raises(InputError):
        outline_overlay(np.zeros((2, 8, 8)), labels)


@pytest.mark.slow
def test_rgb_training_normalises_per_channel_and_predict_reads_colour(tmp_path):
    data = stained_set(tmp_path / "data")
    model = tmp_path / "rgb.pt"
    result = invoke("train", data, "-o", model, "--channels", "rgb", "--epochs", "1", "--quiet", *TINY)
    assert result.exit_code == 0, result.output
    loaded = load_model(model)
    assert loaded.config.channels == "rgb" and loaded.config.in_channels == 3
    assert tuple(loaded.net.state_dict()[FIRST_CONV].shape[:2]) == (4, 3)
    out = tmp_path / "pred"
    result = invoke("predict", data / "images", "-m", model, "-o", out, "--save-overlay", "--json", "--quiet",
                    "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4 and all(r["status"] == "done" and r["shape"][0] == 3 for r in records)
    assert all(r["model"] == str(model) for r in records)
    assert tifffile.imread(out / "cell0_labels.tif").shape == (48, 48)
    assert np.asarray(PIL.Image.open(out / "cell0_overlay.png")).shape == (48, 48, 3)
    result = invoke("predict", data / "images", "-m", model, "-o", out, "--channel", "0", "--overwrite", "--quiet")
    assert result.exit_code != 0 and "--channel picks one channel" in result.output


@pytest.mark.slow
def test_rgb_fine_tune_from_a_grey_parent_spreads_the_first_convolution(tmp_path):
    data = stained_set(tmp_path / "data")
    parent = tmp_path / "grey.pt"
    assert invoke("train", data, "-o", parent, "--epochs", "1", "--quiet", *TINY).exit_code == 0
    child = tmp_path / "rgb.pt"
    result = invoke("train", data, "-o", child, "--init", parent, "--channels", "rgb", "--freeze-encoder", "1",
                    "--epochs", "1", "--quiet", "--batch-size", "4", "--patches-per-epoch", "8", "--device", "cpu",
                    "--threads", "1")
    assert result.exit_code == 0, result.output
    grey_weight = load_model(parent).net.state_dict()[FIRST_CONV]
    colour_weight = load_model(child).net.state_dict()[FIRST_CONV]
    # frozen for the only epoch: each channel holds a third of the parent's grey kernel
    assert colour_weight.shape[1] == 3
    for c in range(3):
        assert torch.allclose(colour_weight[:, c : c + 1], grey_weight / 3)
    info = invoke("model", "info", child)
    assert "colour: R, G, B as 3 channels" in info.stdout and "lineage" in info.stdout


# ---------------------------------------------------------------- shipped models by name


def test_model_list_names_each_shipped_model_with_its_card_line():
    from segtool.model.shipped import SHIPPED_MODELS, find_shipped_model

    result = invoke("model", "list", "--json")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["name"] for r in records] == [m.name for m in SHIPPED_MODELS]
    nuclei = records[0]
    assert nuclei["default"] and nuclei["installed"]
    card = load_model(find_shipped_model("nuclei")).metadata["card"]["test"]
    assert f"AP@0.5 {card['ap_iou50']:.3f}" in nuclei["card"]
    text = invoke("model", "list").stdout
    assert all(m.name in text for m in SHIPPED_MODELS)


def test_predict_by_shipped_name_records_the_model_and_unknown_names_fail_in_one_line(sample_images, tmp_path):
    result = invoke("predict", sample_images[0], "-m", "nuclei", "-o", tmp_path, "--json", "--quiet", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["model"] == "nuclei"
    result = invoke("predict", sample_images[0], "-o", tmp_path / "default", "--json", "--quiet", "--threads", "1")
    assert json.loads(result.stdout.splitlines()[0])["model"] == "nuclei"
    result = invoke("predict", sample_images[0], "-m", "nuclei-xx", "-o", tmp_path, "--quiet")
    assert result.exit_code != 0
    assert "nuclei-xx" in result.stderr and "shipped models" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resolve_model_prefers_an_existing_file_over_a_shipped_name(tmp_path, monkeypatch):
    from segtool.model.shipped import resolve_model

    monkeypatch.chdir(tmp_path)
    Path("nuclei").write_bytes(b"x")
    assert resolve_model("nuclei") == (Path("nuclei"), None)
    with pytest.raises(ModelError, match="model file not found"):
        resolve_model(tmp_path / "none.pt")


def test_shipped_histo_model_is_a_grey_model_scored_on_the_histo_test_split():
    from segtool.model.shipped import find_shipped_model

    he = load_model(find_shipped_model("nuclei-he"))
    assert he.config.in_channels == 1 and he.config.channels == "grey"
    # it reads the hematoxylin channel and was fine-tuned from the fluorescence model
    assert he.config.input == "hematoxylin" and he.metadata["parent"]["name"] == "nuclei"
    assert he.metadata["card"]["test"]["images"] == 20  # the histo test split, not the fluorescence one
    assert all(name.endswith(".tif") for name in he.metadata["training_files"])
    assert he.net.state_dict()[FIRST_CONV].dtype == torch.float32  # stored float16, loaded as float32
    info = invoke("model", "info", "nuclei-he")
    assert info.exit_code == 0 and "dsb2018_histo" in info.stdout


@pytest.mark.slow
def test_torchscript_export_of_an_rgb_model_takes_a_colour_sample(tmp_path):
    data = stained_set(tmp_path / "data", 3)
    model = tmp_path / "rgb.pt"
    assert invoke("train", data, "-o", model, "--channels", "rgb", "--epochs", "1", "--quiet", *TINY).exit_code == 0
    for sample in ([], ["--sample", data / "images" / "cell0.tif"]):
        out = tmp_path / f"rgb_ts{len(sample)}.pt"
        result = invoke("model", "export", model, "-f", "torchscript", "-o", out, *sample)
        assert result.exit_code == 0, result.output
        scripted = torch.jit.load(str(out))
        # three R, G, B planes in, the three_class maps out
        assert tuple(scripted(torch.zeros(1, 3, 32, 32)).shape) == (1, 3, 32, 32)
