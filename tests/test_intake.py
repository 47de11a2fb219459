"""Input transforms (segtool.intake): the pure functions, the stored config, and their use in train/predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.draw import disk

from segtool.errors import InputError, ModelError
from segtool.normalize import normalize_percentile
from segtool.pipeline.read import open_lazy
from segtool.model.config import UNetConfig
from segtool.train.finetune import child_config
from segtool.intake import apply_input_transform, hematoxylin_density, samples_last_to_input
from segtool.model.model import UNet
from segtool.model.modelfile import LoadedModel, load_model, save_model
from segtool.infer.predict import normalize_for_model, predict_image

from helpers import disk_training_set, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1", "--epochs", "1", "--quiet"]
TINY_RUN = ["--batch-size", "4", "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1", "--epochs", "1",
            "--quiet"]

# Optical density per unit stain in R, G, B (Ruifrok & Johnston 2001), written out here on purpose
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
DAB = np.array([0.27, 0.57, 0.78])


def stained(h: np.ndarray, e: np.ndarray, d: np.ndarray) -> np.ndarray:
    """A (3, H, W) float image in [0, 1] transmitting 10**-(optical density) of the given stain amounts."""
    density = h[..., None] * HEMATOXYLIN + e[..., None] * EOSIN + d[..., None] * DAB
    return np.moveaxis(10.0 ** -density, -1, 0)


# ---------------------------------------------------------------- the pure functions


def test_hematoxylin_density_recovers_the_amount_of_stain_mixed_in():
    rng = np.random.default_rng(0)
    h, e, d = rng.uniform(0, 1, (3, 6, 7))
    out = hematoxylin_density(stained(h, e, d))
    assert out.shape == (6, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, h, atol=1e-5)


def test_unstained_and_eosin_only_pixels_have_no_hematoxylin():
    zero = np.zeros((2, 2))
    white = hematoxylin_density(stained(zero, zero, zero))
    pink = hematoxylin_density(stained(zero, np.full((2, 2), 0.8), zero))
    assert np.all(white == 0) and np.all(np.abs(pink) < 1e-6)


def test_integer_images_are_scaled_by_their_type_maximum():
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(1, 256, (3, 5, 5)).astype(np.uint8)
    as16 = (rgb8.astype(np.uint16) * 257)  # 255 -> 65535: the same transmissions
    np.testing.assert_allclose(hematoxylin_density(as16), hematoxylin_density(rgb8), atol=1e-6)
    np.testing.assert_allclose(hematoxylin_density(rgb8), hematoxylin_density(rgb8 / 255.0), atol=1e-6)


def test_grey_images_count_as_equal_red_green_blue_and_darker_means_more_stain():
    grey = np.array([[255, 200], [100, 20]], np.uint8)
    out = hematoxylin_density(grey)
    np.testing.assert_array_equal(out, hematoxylin_density(np.stack([grey] * 3)))
    np.testing.assert_array_equal(out, hematoxylin_density(grey[np.newaxis]))
    assert out[0, 0] == 0 and out[0, 0] < out[0, 1] < out[1, 0] < out[1, 1]


def test_an_alpha_channel_is_ignored_and_other_channel_counts_are_refused():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 4, 4)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((1, 4, 4), 255, np.uint8)])
    np.testing.assert_array_equal(hematoxylin_density(rgba), hematoxylin_density(rgb))
    with pytest.raises(InputError, match="RGB or grey"):
        hematoxylin_density(np.zeros((2, 4, 4)))


def test_inverted_input_normalises_to_one_minus_the_plain_one():
    image = np.array([[0, 10], [30, 200]], np.uint8)
    inverted = normalize_percentile(apply_input_transform(image, "inverted"), 0, 100)
    np.testing.assert_allclose(inverted, (200 - image) / 200.0, atol=1e-6)


def test_intensity_is_the_image_itself_and_unknown_names_are_refused():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert apply_input_transform(image, "intensity") is image
    with pytest.raises(InputError, match="unknown input transform"):
        apply_input_transform(image, "sepia")


# ---------------------------------------------------------------- the config


@pytest.mark.parametrize("transform", ["intensity", "inverted", "hematoxylin"])
def test_samples_last_pieces_give_the_channels_first_rule_of_read_image(transform):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    grey = rgba[..., 0]
    # the whole-image path: channels first, RGB averaged in float32 unless the transform reads colour
    if transform == "hematoxylin":
        expected_rgb = hematoxylin_density(np.moveaxis(rgba, -1, 0))
    else:
        expected_rgb = apply_input_transform(rgba[..., :3].astype(np.float32).mean(axis=-1), transform)
    expected_grey = apply_input_transform(grey, transform)
    np.testing.assert_allclose(samples_last_to_input(rgba, transform), expected_rgb, rtol=1e-6)
    np.testing.assert_allclose(samples_last_to_input(grey[..., np.newaxis], transform), expected_grey, rtol=1e-6)
    # pieces of rows make up the whole
    halves = [samples_last_to_input(rgba[:3], transform), samples_last_to_input(rgba[3:], transform)]
    np.testing.assert_array_equal(np.concatenate(halves), samples_last_to_input(rgba, transform))
    if transform == "intensity":
        assert samples_last_to_input(grey, transform).dtype == np.uint8  # grey intensity keeps the stored type


def test_config_stores_the_transform_and_old_configs_read_as_intensity():
    config = UNetConfig(depth=2, input="hematoxylin")
    assert UNetConfig.from_dict(config.to_dict()).input == "hematoxylin"
    old = config.to_dict()
    del old["input"]
    assert UNetConfig.from_dict(old).input == "intensity"
    with pytest.raises(InputError, match="needs channels 'grey'"):
        UNetConfig(in_channels=3, channels="rgb", input="hematoxylin")
    with pytest.raises(InputError, match="input must be one of"):
        UNetConfig(input="negative")


def test_a_child_keeps_its_chosen_transform_or_else_the_parent_one():
    parent = UNetConfig(depth=2, input="inverted", postprocess={"min_size": 7})
    assert child_config(parent).input == "inverted"
    child = child_config(parent, input_transform="hematoxylin")
    assert child.input == "hematoxylin" and child.postprocess == {"min_size": 7} and child.depth == 2


# ---------------------------------------------------------------- prediction applies it


def tiny_model(input_transform: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    config = UNetConfig(depth=2, base_channels=4, patch_size=16, input=input_transform)
    return LoadedModel(net=UNet(config).eval(), config=config)


def test_prediction_applies_the_stored_transform_before_normalising():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (3, 24, 20)).astype(np.uint8)
    hema, plain = tiny_model("hematoxylin"), tiny_model("intensity")
    plain.net.load_state_dict(hema.net.state_dict())
    by_model = predict_image(rgb, hema).maps
    by_hand = predict_image(hematoxylin_density(rgb), plain).maps
    np.testing.assert_allclose(by_model, by_hand, atol=1e-6)
    inverted = tiny_model("inverted")
    inverted.net.load_state_dict(hema.net.state_dict())
    np.testing.assert_allclose(normalize_for_model(rgb[0], inverted),
                               normalize_for_model(255 - rgb[0].astype(np.int32), plain), atol=1e-6)


def test_a_hematoxylin_model_reads_grey_images_as_equal_channels():
    grey = np.random.default_rng(4).integers(0, 256, (20, 20)).astype(np.uint8)
    model = tiny_model("hematoxylin")
    np.testing.assert_array_equal(predict_image(grey, model).maps, predict_image(np.stack([grey] * 3), model).maps)
    with pytest.raises(InputError, match="RGB or grey"):
        predict_image(np.zeros((2, 20, 20), np.uint8), model)


# ---------------------------------------------------------------- the command line


def write_set(root: Path, count: int = 4, *, seed: int = 0, colour: bool = False) -> Path:
    """Dark purple disks on a light pink background (or their grey average)."""
    def paint(labels, rng, index):
        h = (labels > 0) * 0.8 + rng.uniform(0, 0.05, labels.shape)
        rgb = stained(h, np.full(labels.shape, 0.3), np.zeros(labels.shape))
        image = np.moveaxis((rgb * 255).round().astype(np.uint8), 0, -1)
        return image if colour else image.mean(-1).astype(np.uint8)

    return disk_training_set(root, paint, count=count, seed=seed)


@pytest.fixture(scope="module")
def inverted_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inv")
    data = write_set(root / "data")
    model = root / "inv.pt"
    result = invoke("train", data, "-o", model, "--input", "inverted", "--target", "three_class_distance", *TINY)
    assert result.exit_code == 0, result.output
    return model


def test_cli_train_records_the_transform_predict_uses_it_and_model_info_shows_it(inverted_model, tmp_path):
    assert load_model(inverted_model).config.input == "inverted"
    data = write_set(tmp_path / "data", count=2, seed=1)
    out = tmp_path / "pred"
    result = invoke("predict", data / "images", "-m", inverted_model, "-o", out, "-q", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tif") == ["cell0_labels.tif", "cell1_labels.tif"]
    info = invoke("model", "info", inverted_model)
    assert info.exit_code == 0
    assert any(row.startswith("transform ") and "inverted" in row for row in info.stdout.splitlines())


def test_cli_init_with_input_fine_tunes_a_hematoxylin_child_on_colour_files_and_resumes(inverted_model, tmp_path):
    data = write_set(tmp_path / "data", seed=2, colour=True)
    child = tmp_path / "child.pt"
    result = invoke("train", data, "-o", child, "--init", inverted_model, "--input", "hematoxylin", *TINY_RUN)
    assert result.exit_code == 0, result.output
    loaded, parent = load_model(child), load_model(inverted_model)
    assert loaded.config.input == "hematoxylin" and loaded.config.in_channels == 1
    assert loaded.metadata["parent"]["file"] == "inv.pt"
    assert parent.config.input == "inverted"  # the parent is untouched
    # without --input the child keeps the parent's transform
    same = tmp_path / "same.pt"
    assert invoke("train", data, "-o", same, "--init", inverted_model, *TINY_RUN).exit_code == 0
    assert load_model(same).config.input == "inverted"
    # a resume of the fine-tune keeps its transform and its lineage (and says it ignores a new --input)
    child.unlink()
    result = invoke("train", data, "-o", child, "--resume", tmp_path / "child.ckpt" / "last.pt", "--input", "intensity",
                    "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "ignoring" in result.stderr and "input" in result.stderr
    resumed = load_model(child)
    assert resumed.config.input == "hematoxylin" and resumed.metadata["parent"]["file"] == "inv.pt"


def test_cli_channel_and_transform_mismatches_are_one_line(inverted_model, tmp_path):
    data = write_set(tmp_path / "data", count=2, seed=3, colour=True)
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--input", "hematoxylin", "--channels", "rgb", *TINY)
    assert result.exit_code != 0 and not (tmp_path / "m.pt").exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "hematoxylin" in result.stderr
    assert "Traceback" not in result.output
    hema = tmp_path / "hema.pt"
    save_model(hema, tiny_model("hematoxylin").net, tiny_model("hematoxylin").config)
    result = invoke("predict", data / "images", "-m", hema, "-o", tmp_path / "p", "--channel", "1", "-q")
    assert result.exit_code != 0 and "hematoxylin input reads R, G and B" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "p").exists()


def stained_tissue(shape: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W, 3) uint8: hematoxylin disks on an eosin background."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for k in range(1, 40):
        labels[disk(tuple(rng.integers(6, np.array(shape) - 6)), int(rng.integers(4, 8)), shape=shape)] = k
    h = (labels > 0) * 0.8 + rng.uniform(0, 0.1, shape)
    rgb = stained(h, rng.uniform(0.2, 0.4, shape), np.zeros(shape))
    return np.moveaxis((rgb * 255).round().astype(np.uint8), 0, -1)


@pytest.mark.parametrize("layout", [{"tile": (64, 64), "compression": "zlib"}, {}])
def test_bands_apply_the_transform_row_by_row_as_the_whole_image_gets_it(tmp_path, layout):
    # tiled + compressed: rows decoded tile by tile; plain: rows read through a memory map
    src = tmp_path / "tissue.tif"
    tifffile.imwrite(src, stained_tissue((200, 150), seed=5), photometric="rgb", **layout)
    model = tmp_path / "hema.pt"
    save_model(model, tiny_model("hematoxylin", seed=1).net, tiny_model("hematoxylin", seed=1).config)
    common = ["-m", model, "--tile", "64", "--save-prob", "--json", "--threads", "1"]
    whole = invoke("predict", src, "-o", tmp_path / "whole", "--no-bands", *common)
    bands = invoke("predict", src, "-o", tmp_path / "bands", "--bands", "--band-rows", "64", "--halo", "16", *common)
    assert whole.exit_code == 0 and bands.exit_code == 0, whole.output + bands.output
    assert json.loads(bands.stdout)["bands"] == 4
    a = tifffile.imread(tmp_path / "whole" / "tissue_prob.tif")
    b = tifffile.imread(tmp_path / "bands" / "tissue_prob.tif")
    assert a.shape == b.shape == (3, 200, 150)
    # the network saw the hematoxylin plane in both: the same maps (the grey average would give other ones)
    np.testing.assert_allclose(a, b, atol=1e-3)
    # what the bands read: each row block is the transform of the whole image, cut to those rows
    rgb = stained_tissue((200, 150), seed=5)
    with open_lazy(src, input_transform="hematoxylin") as lazy:
        assert lazy.dtype == np.float32
        rows = lazy.read_rows(70, 135)
    np.testing.assert_array_equal(rows, hematoxylin_density(np.moveaxis(rgb, -1, 0))[70:135])
    with open_lazy(src, input_transform="inverted") as lazy:
        np.testing.assert_array_equal(lazy.read_rows(0, 9), -rgb[:9].astype(np.float32).mean(-1))


def test_an_inverted_model_predicts_in_bands_as_in_memory(inverted_model, tmp_path):
    src = tmp_path / "grey.tif"
    tifffile.imwrite(src, stained_tissue((160, 120), seed=6).mean(-1).astype(np.uint8), tile=(32, 32))
    common = ["-m", inverted_model, "--tile", "64", "--save-prob", "--json", "--threads", "1", "--scale", "1"]  # bands: no size estimate
    whole = invoke("predict", src, "-o", tmp_path / "whole", "--no-bands", *common)
    bands = invoke("predict", src, "-o", tmp_path / "bands", "--bands", "--band-rows", "48", "--halo", "16", *common)
    assert whole.exit_code == 0 and bands.exit_code == 0, whole.output + bands.output
    assert json.loads(bands.stdout)["bands"] >= 3
    np.testing.assert_allclose(tifffile.imread(tmp_path / "whole" / "grey_prob.tif"),
                               tifffile.imread(tmp_path / "bands" / "grey_prob.tif"), atol=1e-3)


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), pytest.param("onnx", ".onnx", marks=pytest.mark.slow),
                                         pytest.param("bioimageio", ".zip", marks=pytest.mark.slow)])
def test_export_carries_a_models_transform(inverted_model, tmp_path, fmt, suffix):
    # issue #38: the transform travels inside the exported network (tests/test_export_transforms.py checks the maps)
    target = tmp_path / f"net{suffix}"
    result = invoke("model", "export", inverted_model, "--format", fmt, "-o", target)
    assert result.exit_code == 0, result.output
    assert target.exists() and "Traceback" not in result.output
    if fmt != "bioimageio":
        assert "inverted and normalisation inside" in result.stderr


def test_dask_prediction_refuses_an_untransformed_image_for_a_model_with_a_transform(inverted_model):
    from segtool.distributed.big_predict import predict_blocks

    with pytest.raises(ModelError, match="input transform 'inverted'.*open_blocks"):
        predict_blocks(np.zeros((64, 64), np.uint8), inverted_model)


def test_dask_blocks_come_transformed_as_the_whole_image(tmp_path):
    from segtool.distributed.blockio import open_blocks

    rgb = stained_tissue((150, 130), seed=7)
    src = tmp_path / "tissue.tif"
    tifffile.imwrite(src, rgb, photometric="rgb", tile=(32, 32), compression="zlib")
    image = open_blocks(src, chunks=64, input_transform="hematoxylin").data
    assert image.dtype == np.float32 and image.npartitions > 1
    np.testing.assert_array_equal(image.compute(), hematoxylin_density(np.moveaxis(rgb, -1, 0)))
    grey = open_blocks(src, chunks=64, input_transform="inverted").data.compute()
    np.testing.assert_array_equal(grey, -rgb.astype(np.float32).mean(-1))
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, rgb.astype(np.float32) / 255, photometric="rgb")
    with pytest.raises(InputError, match="floating-point image needs the whole image's maximum"):
        open_blocks(floats, chunks=64, input_transform="hematoxylin")


def test_cli_predicts_dask_blocks_with_a_hematoxylin_model(tmp_path):
    pytest.importorskip("distributed")
    src = tmp_path / "tissue.tif"
    tifffile.imwrite(src, stained_tissue((150, 130), seed=8), photometric="rgb", tile=(32, 32))
    model = tmp_path / "hema.pt"
    save_model(model, tiny_model("hematoxylin", seed=2).net, tiny_model("hematoxylin", seed=2).config)
    result = invoke("predict", src, "-m", model, "-o", tmp_path / "out", "--block-size", "64", "--tile", "64",
                    "--halo", "16", "--json", "--threads", "1", "--jobs", "1")
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(json.loads(result.stdout)["outputs"]["labels"])
    assert labels.shape == (150, 130)


def test_z_stack_prediction_applies_an_inverted_transform_and_refuses_hematoxylin(tmp_path):
    from segtool.pipeline.options import ObjectOptions
    from segtool.volume.predict import StackPredictOptions, predict_stack, predict_stack_file

    stack = np.stack([stained_tissue((40, 36), seed=k).mean(-1) for k in range(3)]).astype(np.uint8)
    inverted, plain = tiny_model("inverted", seed=3), tiny_model("intensity", seed=3)
    plain.net.load_state_dict(inverted.net.state_dict())
    options = StackPredictOptions(objects=ObjectOptions(prob_threshold=0.3), mode="stitch")
    by_model = predict_stack(stack, inverted, options=options)
    by_hand = predict_stack(-stack.astype(np.float32), plain, options=options)
    np.testing.assert_array_equal(by_model, by_hand)
    assert by_model.max() > 0
    # plane by plane from a file (the stitch schedule reads planes one at a time, normalises with a sample)
    tifffile.imwrite(tmp_path / "stack.tif", stack, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "negated.tif", -stack.astype(np.float32), metadata={"axes": "ZYX"})
    predict_stack_file(tmp_path / "stack.tif", inverted, tmp_path / "a.tif", options=options)
    predict_stack_file(tmp_path / "negated.tif", plain, tmp_path / "b.tif", options=options)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), tifffile.imread(tmp_path / "b.tif"))
    with pytest.raises(InputError, match="input transform 'hematoxylin' needs R, G and B"):
        predict_stack(stack, tiny_model("hematoxylin"))
