"""Tests for choosing the forward-pass precision (float32 or bfloat16 autocast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtool.errors import InputError
from segtool.model.config import UNetConfig
from segtool.model.model import UNet
from segtool.model.precision import autocast, bf16_supported, resolve_precision

CPU = torch.device("cpu")


def test_auto_follows_the_hardware_and_explicit_names_are_kept():
    assert resolve_precision("auto", CPU) == ("bf16" if bf16_supported(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("BF16", CPU) == "bf16"


def test_unknown_names_and_unsupported_devices_are_refused():
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)
    with pytest.raises(InputError, match="not available on device 'mps'"):
        resolve_precision("bf16", torch.device("mps"))
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_bf16_context_rounds_convolutions_and_fp32_context_does_not():
    net = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        with autocast("fp32", CPU):
            exact = net(x)
        with autocast("bf16", CPU):
            rounded = net(x)
    assert exact.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    assert torch.equal(exact, net(x))
    # bfloat16 keeps ~3 significant digits: close to float32, not equal to it
    difference = (rounded.float() - exact).abs().max()
    assert 0 < difference < 0.05 * exact.abs().max()


def test_bf16_inference_gives_the_same_objects_on_a_real_image(sample_images):
    from segtool.io import read_image, read_labels
    from segtool.metrics import match_labels
    from segtool.model.modelfile import load_model
    from segtool.infer.predict import find_packaged_model, predict_image
    from segtool.infer.network import prepare_for_inference

    model = load_model(find_packaged_model())
    exact = prepare_for_inference(model.net)
    rounded = prepare_for_inference(model.net, precision="bf16")
    assert (exact.segtool_precision, rounded.segtool_precision) == ("fp32", "bf16")
    path = next(p for p in sample_images if p.stem == "nuclei_2c840a94d216")
    image = read_image(path).data
    truth = read_labels(path.parent.parent / "masks" / path.name).data
    model.net = exact
    reference = predict_image(image, model)
    model.net = rounded
    result = predict_image(image, model)
    assert result.maps.dtype == np.float32
    gap = np.abs(result.maps - reference.maps)
    assert 0 < gap.max() < 0.2 and gap.mean() < 0.01
    same = match_labels(reference.labels, result.labels, thresholds=(0.5,))
    assert float(same.f1[0]) > 0.97
    assert float(match_labels(truth, result.labels, thresholds=(0.5,)).f1[0]) >= 0.7


def test_predict_cli_precision_option(tmp_path, sample_images):
    import json

    from typer.testing import CliRunner

    from segtool.cli.application import app

    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(sample_images[0]), "-o", str(tmp_path), "--json", "--precision", "bf16"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["objects"] > 5
    result = runner.invoke(app, ["predict", str(sample_images[0]), "-o", str(tmp_path), "--precision", "fp16"])
    assert result.exit_code == 2 and "--precision" in result.stderr
