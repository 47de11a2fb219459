"""Test helpers shared by several test modules: the CLI runner and small hand-built networks.

Fixtures live in conftest.py; plain functions live here (``from helpers import ...``), since pytest
puts this folder on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.draw import disk
from torch import nn
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.model.config import UNetConfig
from segtool.model.model import UNet
from segtool.model.modelfile import LoadedModel

runner = CliRunner()


def invoke(*args, input=None):
    """Run the CLI in-process with ``args`` (converted to strings)."""
    return runner.invoke(app, [str(a) for a in args], input=input)


def dome_unet(postprocess=None, in_channels=1):
    """A real UNet whose weights make it a pointwise 'dome detector' (distance target).

    The first encoder passes x (as relu(x), relu(-x)) to the skip connection, the last decoder
    passes the skip on, everything else is zero; the head turns x into logits
    foreground = 15 (x - 0.3) and distance = 15 (x - 0.55). So the expected labels of an image
    of domes are known without running the network: foreground where x > 0.3, seeds where x > 0.55.
    """
    config = UNetConfig(depth=2, base_channels=4, patch_size=32, target="distance",
                        in_channels=in_channels, postprocess=postprocess or {"min_size": 5})
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        first = net.encoders[0]
        first[0].weight[0, 0, 1, 1] = 1.0
        first[0].weight[1, 0, 1, 1] = -1.0
        first[3].weight[0, 0, 1, 1] = 1.0
        first[3].weight[1, 1, 1, 1] = 1.0
        last = net.decoders[-1].conv
        last[0].weight[0, 0, 1, 1] = 1.0  # skip channels come first in the concatenation
        last[0].weight[1, 1, 1, 1] = 1.0
        last[3].weight[0, 0, 1, 1] = 1.0
        last[3].weight[1, 1, 1, 1] = 1.0
        net.head.weight[0, 0] = 15.0
        net.head.weight[0, 1] = -15.0
        net.head.bias[0] = -4.5
        net.head.weight[1, 0] = 15.0
        net.head.weight[1, 1] = -15.0
        net.head.bias[1] = -8.25
    return net.eval(), config


def random_unet(target="distance", *, depth=2, base=4, patch=32, in_channels=1, gain=40.0, seed=0) -> LoadedModel:
    """A tiny random U-Net in eval mode whose outputs span a useful range.

    Batch-norm statistics are drawn away from the identity and the head's weights scaled by ``gain``,
    so the maps vary enough to catch a tiling or batching error.
    """
    torch.manual_seed(seed)
    config = UNetConfig(depth=depth, base_channels=base, patch_size=patch, target=target, in_channels=in_channels)
    net = UNet(config)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    with torch.no_grad():
        net.head.weight.mul_(gain)
    return LoadedModel(net=net.eval(), config=config)


def disk_training_set(root: Path, paint, *, count: int, seed: int = 0, mask_suffix: str = "") -> Path:
    """Write ``count`` 48x48 images of three random disks each, with their label masks.

    Lays out ``root/images/cellN.tif`` and ``root/masks/cellN{mask_suffix}.tif``, as ``segtool train``
    reads them. ``paint(labels, rng, index)`` turns each label image into the pixels to write (grey or
    RGB), drawing any noise from the same ``rng``, so a seed gives the same files every time.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for index in range(count):
        labels = np.zeros((48, 48), np.uint16)
        for k in range(1, 4):
            labels[disk(tuple(rng.integers(8, 40, 2)), 6, shape=labels.shape)] = k
        image = paint(labels, rng, index)
        tifffile.imwrite(root / "images" / f"cell{index}.tif", image, photometric="rgb" if image.ndim == 3 else None)
        tifffile.imwrite(root / "masks" / f"cell{index}{mask_suffix}.tif", labels)
    return root
