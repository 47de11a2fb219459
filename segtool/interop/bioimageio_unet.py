"""segtool's U-Net as one stand-alone file: the architecture of an exported model.

This file travels inside bioimage.io packages written by ``segtool model
export``, so it imports nothing but PyTorch: a consumer (bioimageio.core,
ilastik, deepImageJ's converter) builds the network from it without segtool
installed. Its parameter names are those of :class:`segtool.unet.model.UNet`,
so a segtool state dict loads into it unchanged, and it is written in the
subset of Python that ``torch.jit.script`` compiles. Its building blocks
(:class:`DoubleConv`, :class:`Up`) are the ones :class:`segtool.unet.model.UNet`
is made of: one source for both networks.

Unlike segtool's own network, the output is activated: class probabilities
(softmax) and, for distance targets, a sigmoid distance map. Instance
post-processing (seeds, watershed) is not part of the network.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["SegtoolUNet", "DoubleConv", "Up"]


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, BatchNorm, ReLU) blocks: one level of the U-Net."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """1x1 conv to the skip's channels, bilinear 2x up-sampling, concat, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # A 1x1 convolution and bilinear interpolation (weights summing to 1) commute, bias
        # included, so reducing the channels first gives the same result on 4x fewer pixels.
        x = self.reduce(x)
        # The skip's size rather than scale_factor=2 (the same sampling, as the skip is
        # exactly twice as large): exporters then keep height and width symbolic.
        x = nn.functional.interpolate(x, size=(skip.shape[2], skip.shape[3]), mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class SegtoolUNet(nn.Module):
    """U-Net with its output activation: (N, C, H, W) image in, (N, K, H, W) maps in [0, 1] out.

    Parameters
    ----------
    in_channels : int
        Input channels.
    depth : int
        Number of 2x down-sampling steps; H and W must be multiples of ``2**depth``.
    base_channels : int
        Feature channels at full resolution, doubled at every level down.
    target : str
        ``"three_class"`` (softmax over background, interior, boundary),
        ``"distance"`` (sigmoid foreground, sigmoid distance) or
        ``"three_class_distance"`` (softmax over the three classes, then a
        sigmoid distance map).
    """

    def __init__(self, in_channels: int = 1, depth: int = 4, base_channels: int = 16,
                 target: str = "three_class") -> None:
        super().__init__()
        outputs = {"three_class": 3, "distance": 2, "three_class_distance": 4}
        if target not in outputs:
            raise ValueError(f"unknown target {target!r}; expected one of {sorted(outputs)}")
        self.target = target
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.decoders = nn.ModuleList([Up(widths[i + 1], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], outputs[target], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        level = 0
        for encoder in self.encoders:
            if level > 0:
                x = nn.functional.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
            level += 1
        skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        logits = self.head(x)
        if self.target == "three_class":
            return torch.softmax(logits, dim=1)
        if self.target == "three_class_distance":
            return torch.cat([torch.softmax(logits[:, :3], dim=1), torch.sigmoid(logits[:, 3:])], dim=1)
        return torch.sigmoid(logits)
