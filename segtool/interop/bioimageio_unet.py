"""segtool's U-Net as one stand-alone file: the architecture of an exported model.

This file travels inside bioimage.io packages written by ``segtool model
export``, so it imports nothing but PyTorch: a consumer (bioimageio.core,
ilastik, deepImageJ's converter) builds the network from it without segtool
installed. Its parameter names are those of :class:`segtool.model.model.UNet`,
so a segtool state dict loads into it unchanged, and it is written in the
subset of Python that ``torch.jit.script`` compiles. Its building blocks
(:class:`DoubleConv`, :class:`Up`) are the ones :class:`segtool.model.model.UNet`
is made of: one source for both networks.

Unlike segtool's own network, the output is activated: class probabilities
(softmax) and, for distance targets, a sigmoid distance map. Instance
post-processing (seeds, watershed) is not part of the network.

A model with an input transform (``segtool train --input inverted`` or
``hematoxylin``) carries it inside: such a network reads the raw image
(hematoxylin: R, G, B with white at ``white_level``), applies the transform
and then the percentile normalisation, because the normalisation comes after
the transform and a consumer could not put it in between. The arithmetic is
that of ``segtool.intake`` and ``segtool.normalize``: optical density
``-log10(clip(rgb / white_level, 1/256, 1))``, its dot product with the
hematoxylin column of the inverse stain matrix, negative amounts cut to 0,
then each image's ``norm_low`` / ``norm_high`` percentiles (linear
interpolation, as ``numpy.percentile``) mapped to 0 / 1.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["SegtoolUNet", "DoubleConv", "Up", "percentile_rows"]


def percentile_rows(rows: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0-100) of each row of a (N, M) tensor, interpolated as ``numpy.percentile``.

    >>> percentile_rows(torch.tensor([[0.0, 10.0, 20.0, 30.0]]), 50.0).tolist()
    [15.0]
    """
    ordered, _ = torch.sort(rows, dim=1)
    # positions as tensors, not Python numbers: an ONNX export then keeps them symbolic in the image size
    last = torch.ones_like(ordered).sum(dim=1, keepdim=True) - 1  # (N, 1): the last index
    position = last * (q / 100.0)
    below = torch.floor(position)
    above = torch.minimum(below + 1, last)
    fraction = position - below
    low = torch.gather(ordered, 1, below.long())
    high = torch.gather(ordered, 1, above.long())
    return (low + (high - low) * fraction)[:, 0]


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
    input_transform : str
        ``"intensity"`` (the default): the input is the image already
        normalised. ``"inverted"`` or ``"hematoxylin"``: the input is the raw
        image (hematoxylin: 3 channels, R, G, B), transformed and normalised
        inside (see the module docstring).
    white_level : float
        ``hematoxylin``: the value of unstained, fully lit pixels.
    hematoxylin_weights : list of float
        ``hematoxylin``: the weights of the R, G, B optical densities.
    norm_low, norm_high : float
        Percentiles mapped to 0 and 1 after a transform.
    """

    def __init__(self, in_channels: int = 1, depth: int = 4, base_channels: int = 16,
                 target: str = "three_class", input_transform: str = "intensity", white_level: float = 255.0,
                 hematoxylin_weights: List[float] = (0.0, 0.0, 0.0), norm_low: float = 1.0,
                 norm_high: float = 99.8) -> None:
        super().__init__()
        outputs = {"three_class": 3, "distance": 2, "three_class_distance": 4}
        if target not in outputs:
            raise ValueError(f"unknown target {target!r}; expected one of {sorted(outputs)}")
        if input_transform not in ("intensity", "inverted", "hematoxylin"):
            raise ValueError(f"unknown input transform {input_transform!r}")
        if input_transform == "hematoxylin" and in_channels != 1:
            raise ValueError("the hematoxylin transform gives one channel: in_channels must be 1")
        self.target = target
        # plain numbers, not buffers: the state dict stays the one of segtool's UNet
        self.input_transform = input_transform
        self.white_level = float(white_level)
        self.weights_rgb = [float(w) for w in hematoxylin_weights]
        self.norm_low = float(norm_low)
        self.norm_high = float(norm_high)
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.decoders = nn.ModuleList([Up(widths[i + 1], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], outputs[target], 1)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw image (N, C, H, W) to the normalised network input (N, 1, H, W); see the module docstring."""
        if self.input_transform == "hematoxylin":
            transmission = torch.clamp(x[:, :3] / self.white_level, 1.0 / 256, 1.0)
            density = -torch.log10(transmission)
            x = (density[:, 0:1] * self.weights_rgb[0] + density[:, 1:2] * self.weights_rgb[1]
                 + density[:, 2:3] * self.weights_rgb[2])
            x = torch.clamp(x, min=0.0)
        else:
            x = -x
        # each image and channel by its own percentiles, as segtool normalises
        rows = x.reshape(x.shape[0] * x.shape[1], -1)
        low = percentile_rows(rows, self.norm_low).reshape(x.shape[0], x.shape[1], 1, 1)
        high = percentile_rows(rows, self.norm_high).reshape(x.shape[0], x.shape[1], 1, 1)
        return (x - low) / (high - low + 1e-20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform != "intensity":
            x = self.transform(x)
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
