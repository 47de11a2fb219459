"""Tests for choosing the forward-pass precision (float32 or bfloat16 autocast)."""

from __future__ import annotations

import pytest
import torch

from segtool.errors import InputError
from segtool.unet.config import UNetConfig
from segtool.unet.model import UNet
from segtool.unet.precision import autocast, bf16_supported, resolve_precision

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
