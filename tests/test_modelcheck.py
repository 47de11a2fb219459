"""A model file checked against itself before a network is built (segtool.model.modelcheck).

The hostile corpus, run through the CLI under a memory cap, is tests/test_model_fuzz.py;
here are the pieces, in-process.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from helpers import invoke

from segtool.errors import InputError, ModelError
from segtool.napari.segment import SegmentOptions, check_model
from segtool.model.config import UNetConfig
from segtool.model.model import UNet
from segtool.model.modelcheck import (
    MAX_PARAMETERS,
    check_network_size,
    check_state_dict,
    check_torch_archive,
    config_shapes,
    read_entry,
    weights_entry_limit,
)
from segtool.model.modelfile import check_model_file, load_model, save_model
from segtool.model.shipped import find_shipped_model

TINY = UNetConfig(depth=2, base_channels=4, patch_size=32)


@pytest.mark.parametrize("config", [
    UNetConfig(depth=1, base_channels=2, patch_size=16, target="distance"),
    UNetConfig(depth=3, base_channels=4, patch_size=32, in_channels=3, channels="rgb"),
    UNetConfig(depth=4, base_channels=3, patch_size=32, target="three_class_distance"),
])
def test_shapes_from_the_meta_device_are_those_of_the_real_network(config):
    real = {name: tuple(t.shape) for name, t in UNet(config).state_dict().items()}
    assert config_shapes(config) == real


def test_the_issues_file_is_named_inconsistent_by_predict_and_info(tmp_path):
    payload = torch.load(find_shipped_model("nuclei"), weights_only=True)
    config = json.loads(payload["config"])
    config.update(base_channels=1024, depth=6)
    edited = tmp_path / "edited.pt"
    torch.save({**payload, "config": json.dumps(config)}, edited)
    line = (f"segtool: error: {edited}: model file is inconsistent: config says depth 6, 1024 base channels, "
            "1 input channel(s), 4 outputs (three_class_distance), weights hold depth 4, 16 base channels, "
            "1 input channel(s), 4 outputs (three_class_distance)\n")
    result = invoke("predict", tmp_path, "-m", edited, "-o", tmp_path / "out")
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line)
    info = invoke("model", "info", edited)
    assert (info.exit_code, info.stdout, info.stderr) == (1, "", line)
    assert not (tmp_path / "out").exists()


def test_shipped_models_pass_every_check():
    for name in ("nuclei", "nuclei-he"):
        path = find_shipped_model(name)
        check_torch_archive(path)
        check_model_file(path)
        payload = torch.load(path, weights_only=True)
        # float16 as shipped, and the float32 and float64 of a loaded network, are all plain weights
        for dtype in (torch.float16, torch.float32, torch.float64):
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
            check_state_dict(UNetConfig.from_dict(json.loads(payload["config"])), state)


def test_network_size_limit():
    assert check_network_size(TINY) < 10_000
    # depth 6 with 64 base channels (4.6e8 parameters) is allowed; depth 6 with 128 is 4x as large
    assert check_network_size(UNetConfig(depth=6, base_channels=64, patch_size=64)) < MAX_PARAMETERS
    with pytest.raises(ModelError, match="more than segtool loads"):
        check_network_size(UNetConfig(depth=6, base_channels=128, patch_size=64))
    with pytest.raises(ModelError, match="more than segtool loads"):
        weights_entry_limit({"depth": 8, "base_channels": 1024, "patch_size": 256})
    with pytest.raises(ModelError, match="invalid config: unknown config keys: heads"):
        weights_entry_limit({"depth": 2, "heads": 4})


def test_read_entry_refuses_before_decompressing():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.json", b"0" * 1000)
    with zipfile.ZipFile(buffer) as archive:
        assert read_entry(archive, "a.json", 1000, "package") == b"0" * 1000
        with pytest.raises(ModelError, match="entry a.json would decompress past 999 bytes"):
            read_entry(archive, "a.json", 999, "package")


def test_a_legacy_pickle_model_file_is_refused(tmp_path):
    net = UNet(TINY)
    path = tmp_path / "legacy.pt"
    torch.save({"format": "segtool-unet", "format_version": 1, "config": json.dumps(TINY.to_dict()),
                "metadata": "{}", "state_dict": net.state_dict()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="old-style pickle, which segtool does not read"):
        load_model(path)


def test_model_export_and_the_napari_model_field_refuse_nan_weights(tmp_path):
    net = UNet(TINY)
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    model = save_model(tmp_path / "nan.pt", net, TINY)
    out = tmp_path / "nan_ts.pt"
    result = invoke("model", "export", model, "--format", "torchscript", "-o", out)
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr == (f"segtool: error: {model}: model file holds non-finite weights (NaN or infinity) "
                             "in head.bias; refused\n")
    with pytest.raises(InputError, match=f"^{model}: model file holds non-finite weights"):
        check_model(SegmentOptions(method="U-Net", model=str(model)))
    check_model(SegmentOptions(method="baseline", model=str(model)))  # the baseline does not use it
    check_model(SegmentOptions(method="U-Net", model=None))  # the shipped model


def test_models_written_by_save_model_load_with_identical_outputs(tmp_path):
    torch.manual_seed(3)
    net = UNet(TINY).eval()
    path = save_model(tmp_path / "m.pt", net, TINY)
    loaded = load_model(path)
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.net(image), net(image))
