"""Tests for the U-Net config, network, output heads and model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segtool.errors import InputError, ModelError, OutputError
from segtool.model.config import UNetConfig
from segtool.model.heads import activate
from segtool.interop.bioimageio_unet import Up
from segtool.model.model import UNet, resolve_device
from segtool.model.modelfile import load_model, save_model
from segtool.model.modelinfo import read_model_info


def tiny(**kwargs) -> UNetConfig:
    defaults = dict(depth=2, base_channels=4, patch_size=32)
    defaults.update(kwargs)
    return UNetConfig(**defaults)


# ---------------------------------------------------------------- config


def test_config_roundtrip_through_json():
    cfg = tiny(target="distance", postprocess={"prob_threshold": 0.4, "min_size": 12})
    text = json.dumps(cfg.to_dict())
    again = UNetConfig.from_dict(json.loads(text))
    assert again == cfg
    assert again.out_channels == 2
    assert cfg.to_dict()["out_channels"] == 2


def test_config_out_channels_follow_target():
    assert tiny().out_channels == 3
    assert tiny(target="distance").out_channels == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target="stardist"), "unknown target"),
        (dict(depth=0), "depth"),
        (dict(depth=2.0), "integer"),
        (dict(base_channels=0), "base_channels"),
        (dict(patch_size=30), "multiple of 2\\*\\*depth"),
        (dict(norm_low=50, norm_high=10), "percentiles"),
        (dict(norm_high=float("nan")), "finite"),
        (dict(postprocess=[1]), "postprocess"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(InputError, match=match):
        tiny(**kwargs)


def test_config_from_dict_rejects_unknown_keys_and_wrong_out_channels():
    data = tiny().to_dict()
    with pytest.raises(InputError, match="unknown config keys: colour"):
        UNetConfig.from_dict({**data, "colour": "red"})
    with pytest.raises(InputError, match="out_channels"):
        UNetConfig.from_dict({**data, "out_channels": 2})


def test_config_does_not_share_postprocess_dict():
    post = {"min_size": 5}
    cfg = tiny(postprocess=post)
    cfg.postprocess["min_size"] = 7
    assert post == {"min_size": 5}


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("target", ["three_class", "distance"])
def test_output_shape_for_depths_and_non_square_sizes(depth, target):
    cfg = tiny(depth=depth, target=target, patch_size=2**depth * 4)
    net = UNet(cfg).eval()
    m = 2**depth
    for h, w in [(m, m), (3 * m, 5 * m), (7 * m, m)]:
        out = net(torch.zeros(2, 1, h, w))
        assert tuple(out.shape) == (2, cfg.out_channels, h, w)
        assert out.dtype == torch.float32


def test_multi_channel_input():
    net = UNet(tiny(in_channels=2)).eval()
    assert tuple(net(torch.rand(1, 2, 12, 20)).shape) == (1, 3, 12, 20)


def test_rejects_sizes_that_are_not_multiples():
    net = UNet(tiny(depth=3, patch_size=32)).eval()
    with pytest.raises(InputError, match="multiples of 8"):
        net(torch.zeros(1, 1, 20, 24))
    with pytest.raises(InputError, match="shape"):
        net(torch.zeros(1, 2, 16, 16))


def test_bilinear_upsampling_has_no_checkerboard_on_constant_input():
    torch.manual_seed(0)
    up = Up(8, 4).eval()
    low = torch.full((1, 8, 6, 6), 0.7)
    skip = torch.zeros(1, 4, 12, 12)
    # the reduced, up-sampled features before the skip concat stay constant
    with torch.no_grad():
        reduced = torch.nn.functional.interpolate(up.reduce(low), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(reduced, reduced[:, :, :1, :1].expand_as(reduced), atol=1e-6)
    # a randomly initialised stride-2 transposed convolution does not stay constant
    torch.manual_seed(0)
    tconv = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
    with torch.no_grad():
        out = tconv(low)
    assert float(out[..., 0::2, 0::2].mean() - out[..., 1::2, 0::2].mean()).__abs__() > 1e-3
    assert up(low, skip).shape == (1, 4, 12, 12)


def test_reducing_channels_before_upsampling_equals_after():
    torch.manual_seed(0)
    up = Up(8, 4).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        first = up.reduce(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        second = torch.nn.functional.interpolate(up.reduce(x), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(first, second, atol=1e-5)


def test_whole_network_constant_input_gives_smooth_interior():
    torch.manual_seed(0)
    net = UNet(tiny(depth=2, base_channels=4)).eval()
    with torch.no_grad():
        out = net(torch.full((1, 1, 96, 96), 0.5))
    # far from the zero-padded border every pixel sees the same input: no 2-pixel period
    centre = out[0, :, 40:56, 40:56]
    assert float(centre.std(dim=(1, 2)).max()) < 1e-4


def test_backward_runs_and_train_eval_modes_differ_only_by_batchnorm():
    torch.manual_seed(0)
    net = UNet(tiny())
    x = torch.rand(2, 1, 32, 32)
    loss = net(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


# ---------------------------------------------------------------- heads


def test_activate_three_class_softmax_sums_to_one():
    logits = torch.randn(2, 3, 5, 7)
    maps = activate(logits, "three_class")
    assert torch.allclose(maps.sum(dim=1), torch.ones(2, 5, 7), atol=1e-6)
    maps3 = activate(logits[0], "three_class")
    assert torch.allclose(maps3, maps[0])


def test_activate_distance_sigmoid_per_channel():
    logits = torch.tensor([[[0.0]], [[100.0]]])
    maps = activate(logits, "distance")
    assert maps.shape == (2, 1, 1)
    assert float(maps[0]) == pytest.approx(0.5)
    assert float(maps[1]) == pytest.approx(1.0)


def test_activate_three_class_distance_softmax_then_sigmoid():
    logits = torch.zeros(2, 4, 3, 3)
    logits[:, 0] = 2.0
    logits[:, 3] = -100.0
    maps = activate(logits, "three_class_distance")
    assert maps.shape == (2, 4, 3, 3)
    assert torch.allclose(maps[:, :3].sum(dim=1), torch.ones(2, 3, 3), atol=1e-6)
    assert float(maps[0, 0, 0, 0]) == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert float(maps[:, 3].max()) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(activate(logits[0], "three_class_distance"), maps[0])


def test_activate_rejects_wrong_channels_and_targets():
    with pytest.raises(InputError, match="needs 2 channels"):
        activate(torch.zeros(1, 3, 4, 4), "distance")
    with pytest.raises(InputError, match="unknown target"):
        activate(torch.zeros(1, 3, 4, 4), "softmax")


# ---------------------------------------------------------------- device


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


# ---------------------------------------------------------------- model file


def test_save_load_roundtrip_predicts_identically(tmp_path):
    torch.manual_seed(0)
    cfg = tiny(target="distance", postprocess={"prob_threshold": 0.45})
    net = UNet(cfg)
    net(torch.rand(4, 1, 32, 32))  # update BatchNorm running stats
    net.eval()
    meta = {"segtool_version": "0.1.0", "epochs": 3, "val": {"f1": 0.8, "loss": float("nan")}}
    path = save_model(tmp_path / "m.pt", net, cfg, metadata=meta)
    assert path.exists()
    loaded = load_model(path)
    assert loaded.config == cfg
    assert loaded.metadata["epochs"] == 3
    assert loaded.metadata["val"]["loss"] is None  # NaN stored as null, strict JSON
    assert not loaded.net.training
    x = torch.rand(1, 1, 16, 48)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.net(x))


def test_model_file_is_plain_weights_only_dict(tmp_path):
    cfg = tiny()
    path = save_model(tmp_path / "m.pt", UNet(cfg), cfg, metadata={})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "segtool-unet"
    assert payload["format_version"] == 1
    assert json.loads(payload["config"])["depth"] == 2
    info = read_model_info(path)
    assert info["config"]["target"] == "three_class"
    assert info["parameters"] == sum(p.numel() for p in UNet(cfg).parameters())
    json.dumps(info)


def test_save_refuses_to_overwrite(tmp_path):
    cfg = tiny()
    path = save_model(tmp_path / "m.pt", UNet(cfg), cfg)
    with pytest.raises(OutputError):
        save_model(path, UNet(cfg), cfg)
    save_model(path, UNet(cfg), cfg, overwrite=True)


def test_load_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_load_truncated_file(tmp_path):
    cfg = tiny()
    path = save_model(tmp_path / "m.pt", UNet(cfg), cfg)
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable segtool model"):
        load_model(bad)


def test_load_foreign_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a readable"):
        load_model(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ModelError, match="not a segtool model"):
        load_model(plain)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_refuses_to_unpickle_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "segtool-unet", "x": _Evil()}, path)
    with pytest.raises(ModelError, match="not a readable"):
        load_model(path)
    assert "pwned" not in capsys.readouterr().out


def test_load_newer_format_and_bad_weights(tmp_path):
    cfg = tiny()
    net = UNet(cfg)
    base = {
        "format": "segtool-unet",
        "format_version": 1,
        "config": json.dumps(cfg.to_dict()),
        "metadata": "{}",
        "state_dict": net.state_dict(),
    }
    newer = tmp_path / "newer.pt"
    torch.save({**base, "format_version": 99}, newer)
    with pytest.raises(ModelError, match="version 99"):
        load_model(newer)
    wrong = tmp_path / "wrong.pt"
    torch.save({**base, "config": json.dumps(tiny(base_channels=8).to_dict())}, wrong)
    with pytest.raises(ModelError, match="config says depth 2, 8 base channels.*weights hold depth 2, 4 base channels"):
        load_model(wrong)
    badcfg = tmp_path / "badcfg.pt"
    torch.save({**base, "config": '{"depth": -1}'}, badcfg)
    with pytest.raises(ModelError, match="invalid config"):
        load_model(badcfg)


def test_load_rejects_a_folder(tmp_path):
    with pytest.raises(ModelError, match="folder"):
        load_model(tmp_path)


def test_state_dict_numpy_free():
    # everything in the state dict is a tensor, so weights_only loading works
    assert all(isinstance(t, torch.Tensor) for t in UNet(tiny()).state_dict().values())
    assert np.dtype("float32") == np.float32
