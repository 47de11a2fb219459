"""Fine-tuning from a parent model: ``train --init``, channel adaptation, lineage, resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.draw import disk

from segtool.errors import ModelError
from segtool.model.config import UNetConfig
from segtool.train.finetune import FIRST_CONV, adapt_input_weights, child_config, load_init
from segtool.model.model import UNet
from segtool.model.modelfile import load_model
from segtool.train.options import TrainOptions
from segtool.train.resume import read_checkpoint_settings
from segtool.train.loop import train_model

from helpers import invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1"]
# --init takes the architecture from the parent: only the run's size is given
TINY_RUN = ["--batch-size", "4", "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1"]


def disks(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    labels = np.zeros((size, size), np.uint16)
    for k in range(1, 4):
        labels[disk(tuple(rng.integers(8, size - 8, 2)), 6, shape=labels.shape)] = k
    return labels


def write_set(root: Path, count: int = 4, *, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for index in range(count):
        labels = disks(rng)
        image = ((labels > 0) * 120 + rng.normal(20, 5, labels.shape)).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"cell{index}.tif", image)
        tifffile.imwrite(root / "masks" / f"cell{index}.tif", labels)
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory) -> Path:
    """A tiny trained grey model, to fine-tune from."""
    root = tmp_path_factory.mktemp("parent")
    data = write_set(root / "data")
    model = root / "parent.pt"
    result = invoke("train", data, "-o", model, "--epochs", "1", "--quiet", "--target", "three_class_distance", *TINY)
    assert result.exit_code == 0, result.output
    return model


# ---------------------------------------------------------------- channel adaptation


@pytest.mark.parametrize("channels", [2, 3])
def test_grey_weights_spread_over_channels_give_the_parent_response_on_equal_channels(channels):
    torch.manual_seed(0)
    grey = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    colour = UNet(UNetConfig(depth=2, base_channels=4, in_channels=channels)).eval()
    weights = dict(grey.state_dict())
    weights[FIRST_CONV] = adapt_input_weights(weights[FIRST_CONV], channels)
    colour.load_state_dict(weights)
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        expected = grey(image)
        got = colour(image.repeat(1, channels, 1, 1))
    assert torch.allclose(got, expected, atol=1e-5)


def test_colour_weights_summed_to_grey_give_the_parent_response_on_a_grey_image():
    torch.manual_seed(1)
    colour = UNet(UNetConfig(depth=2, base_channels=4, in_channels=3)).eval()
    grey = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    weights = dict(colour.state_dict())
    weights[FIRST_CONV] = adapt_input_weights(weights[FIRST_CONV], 1)
    grey.load_state_dict(weights)
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(grey(image), colour(image.repeat(1, 3, 1, 1)), atol=1e-5)


def test_channel_counts_without_a_defined_mapping_are_refused():
    with pytest.raises(ModelError, match="cannot adapt a 2-channel model to 3"):
        adapt_input_weights(torch.zeros(4, 2, 3, 3), 3)


def test_child_config_keeps_the_parent_network_and_postprocessing():
    parent = UNetConfig(depth=3, base_channels=8, target="distance", norm_low=2.0, norm_high=99.0, patch_size=64,
                        postprocess={"min_size": 30})
    child = child_config(parent, channels="rgb")
    assert (child.depth, child.base_channels, child.target, child.norm_low, child.norm_high, child.patch_size) == (
        3, 8, "distance", 2.0, 99.0, 64)
    assert child.postprocess == {"min_size": 30} and child.in_channels == 3


# ---------------------------------------------------------------- loading, freezing, resume


def test_load_init_reads_the_parent_weights_and_records_its_hash(parent_file):
    parent = load_model(parent_file)
    init = load_init(parent_file)
    expected = parent.net.state_dict()
    assert init.state_dict.keys() == expected.keys()
    assert all(torch.equal(init.state_dict[k], expected[k]) for k in expected)
    assert init.record["sha256"] == sha256(parent_file)
    assert init.record["name"] == "parent.pt" and init.record["parent"] is None


def test_load_init_accepts_a_shipped_name_and_refuses_unknown_ones(tmp_path):
    from segtool.model.shipped import find_shipped_model

    init = load_init("nuclei")
    assert init.record["name"] == "nuclei"
    assert init.record["sha256"] == sha256(find_shipped_model("nuclei"))
    # the shipped file stores float16: training starts from float32 copies
    assert init.state_dict[FIRST_CONV].dtype == torch.float32
    with pytest.raises(ModelError, match="no-such-model"):
        load_init("no-such-model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable segtool model file"):
        load_init(junk)


def synthetic_pairs(count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        labels = disks(rng)
        # dark objects on a bright background: a new domain for a parent trained on bright objects
        image = (200 - (labels > 0) * 120 + rng.normal(0, 5, labels.shape)).clip(0, 255).astype(np.uint8)
        pairs.append((image, labels))
    return pairs


@pytest.mark.slow
def test_frozen_encoder_keeps_the_parent_weights_while_the_decoder_learns(parent_file, tmp_path):
    init = load_init(parent_file)
    config = child_config(init.config)
    options = TrainOptions(epochs=2, batch_size=4, patches_per_epoch=8, device="cpu", patience=0, seed=0,
                           freeze_encoder_epochs=2)
    result = train_model(synthetic_pairs(4, 1), synthetic_pairs(1, 2), config, options=options,
                         checkpoint_dir=tmp_path / "ckpt", init_weights=init.weights_for(config))
    trained = result.net.state_dict()
    encoder = [k for k in trained if k.startswith("encoders.") and k.endswith(".weight")]
    decoder = [k for k in trained if k.startswith("decoders.") and k.endswith(".weight")]
    assert encoder and decoder
    assert all(torch.equal(trained[k], init.state_dict[k]) for k in encoder)
    assert any(not torch.equal(trained[k], init.state_dict[k]) for k in decoder)


@pytest.mark.slow
def test_unfrozen_fine_tune_starts_from_the_parent_not_from_a_random_net(parent_file, tmp_path):
    init = load_init(parent_file)
    config = child_config(init.config)
    # a learning rate this small moves no weight far: the result stays next to where it started
    options = TrainOptions(epochs=1, batch_size=4, patches_per_epoch=4, learning_rate=1e-7, weight_decay=0.0,
                           device="cpu", patience=0, seed=5)
    result = train_model(synthetic_pairs(2, 1), [], config, options=options, checkpoint_dir=tmp_path / "ckpt",
                         init_weights=init.weights_for(config))
    trained = result.net.state_dict()
    weight = trained[FIRST_CONV]
    assert torch.allclose(weight, init.state_dict[FIRST_CONV], atol=1e-4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)  # what this seed would start from without init_weights
        scratch = UNet(config).state_dict()[FIRST_CONV]
    assert not torch.allclose(weight, scratch, atol=1e-2)


@pytest.mark.slow
def test_interrupted_fine_tune_resumes_to_the_uninterrupted_result(parent_file, tmp_path):
    init = load_init(parent_file)
    config = child_config(init.config)
    options = TrainOptions(epochs=2, batch_size=4, patches_per_epoch=8, learning_rate=1e-3, device="cpu",
                           patience=0, seed=3, freeze_encoder_epochs=1)
    train, val = synthetic_pairs(4, 1), synthetic_pairs(1, 2)
    weights = init.weights_for(config)
    full = train_model(train, val, config, options=options, checkpoint_dir=tmp_path / "full", init_weights=weights)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1  # after the first step, inside the first (frozen) epoch

    first = train_model(train, val, config, options=options, checkpoint_dir=tmp_path / "part", init_weights=weights,
                        stop_requested=stop, checkpoint_extra={"parent": init.record})
    assert first.stop_reason == "interrupted"
    _, _, state = read_checkpoint_settings(first.last_checkpoint)
    assert state["loop"]["epoch"] == 0 and state["extra"]["parent"]["sha256"] == init.record["sha256"]
    # resuming starts from the checkpoint's weights, whatever init_weights says
    resumed = train_model(train, val, config, options=options, checkpoint_dir=tmp_path / "part",
                          resume_from=first.last_checkpoint, init_weights=None)
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    a, b = resumed.net.state_dict(), full.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_init_records_lineage_and_model_info_shows_it(parent_file, tmp_path):
    data = write_set(tmp_path / "data", seed=5)
    child = tmp_path / "child.pt"
    result = invoke("train", data, "-o", child, "--init", parent_file, "--epochs", "1", "--freeze-encoder", "1",
                    "--depth", "3", "--quiet", *TINY_RUN)
    assert result.exit_code == 0, result.output
    loaded = load_model(child)
    parent = load_model(parent_file)
    assert loaded.config.depth == parent.config.depth == 2  # --depth is the parent's, not the option's
    assert loaded.metadata["parent"]["sha256"] == sha256(parent_file)
    assert loaded.metadata["options"]["freeze_encoder_epochs"] == 1
    # fine-tuning defaults apply when --lr is not given
    from segtool.train.options import FINETUNE_DEFAULTS

    assert loaded.metadata["options"]["learning_rate"] == FINETUNE_DEFAULTS["lr"]
    # the encoder was frozen for the only epoch: its convolutions are exactly the parent's
    mine, theirs = loaded.net.state_dict(), parent.net.state_dict()
    encoder = [k for k in theirs if k.startswith("encoders.") and k.endswith(".weight")]
    assert FIRST_CONV in encoder and all(torch.equal(mine[k], theirs[k]) for k in encoder)
    # a grandchild carries the whole chain
    grandchild = tmp_path / "grandchild.pt"
    result = invoke("train", data, "-o", grandchild, "--init", child, "--epochs", "1", "--lr", "1e-4", "--quiet", *TINY_RUN)
    assert result.exit_code == 0, result.output
    info = invoke("model", "info", grandchild)
    assert info.exit_code == 0
    line = [row for row in info.stdout.splitlines() if row.startswith("lineage")][0]
    assert f"child.pt (sha256 {sha256(child)[:16]}" in line
    assert f"<- parent.pt (sha256 {sha256(parent_file)[:16]}" in line
    assert load_model(grandchild).metadata["options"]["learning_rate"] == 1e-4


@pytest.mark.slow
def test_cli_resume_of_a_fine_tune_keeps_the_lineage(parent_file, tmp_path):
    data = write_set(tmp_path / "data", seed=6)
    model = tmp_path / "ft.pt"
    assert invoke("train", data, "-o", model, "--init", parent_file, "--epochs", "1", "--quiet", *TINY_RUN).exit_code == 0
    model.unlink()
    last = tmp_path / "ft.ckpt" / "last.pt"
    result = invoke("train", data, "-o", model, "--resume", last, "--init", "nuclei", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert load_model(model).metadata["parent"]["sha256"] == sha256(parent_file)


def test_cli_init_errors_are_one_line(tmp_path):
    data = write_set(tmp_path / "data")
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--init", tmp_path / "missing.pt", *TINY_RUN)
    assert result.exit_code != 0
    assert "missing.pt" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--freeze-encoder", "2", *TINY)
    assert result.exit_code != 0 and "--freeze-encoder needs --init" in result.stderr
