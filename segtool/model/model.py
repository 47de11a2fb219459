"""The U-Net: two 3x3 conv + BatchNorm + ReLU per level, bilinear up-sampling.

Down: max-pool by 2, double the channels. Up: a 1x1 convolution that halves
the channels and bilinear 2x up-sampling (the two commute; the convolution
runs first, on 4x fewer pixels) - a learned transposed convolution starts
random and leaves checkerboard artefacts, bilinear interpolation cannot -
then concatenation with the skip connection and two 3x3 convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from segtool.errors import InputError
# The blocks live in the stand-alone file that bioimage.io packages carry, so the exported
# architecture and segtool's own network cannot drift apart.
from segtool.interop.bioimageio_unet import DoubleConv, Up
from segtool.model.config import UNetConfig

__all__ = ["UNet", "resolve_device"]


class UNet(nn.Module):
    """U-Net built from a :class:`~segtool.model.config.UNetConfig`.

    Parameters
    ----------
    config : UNetConfig
        ``in_channels``, ``depth``, ``base_channels`` and ``target`` (which
        fixes ``out_channels``) are used.

    Notes
    -----
    Input is ``(N, in_channels, H, W)`` float32 with ``H`` and ``W`` multiples
    of ``2**depth``; output is logits ``(N, out_channels, H, W)``. Use
    :func:`segtool.model.heads.activate` to turn them into maps.

    Examples
    --------
    >>> net = UNet(UNetConfig(depth=2, base_channels=4))
    >>> tuple(net(torch.zeros(1, 1, 8, 12)).shape)
    (1, 3, 8, 12)
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv(config.in_channels, widths[0])]
            + [DoubleConv(widths[i - 1], widths[i]) for i in range(1, config.depth + 1)]
        )
        self.decoders = nn.ModuleList(
            [Up(widths[i + 1], widths[i]) for i in reversed(range(config.depth))]
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"expected input of shape (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise InputError(
                f"input height and width must be multiples of {multiple}, got {tuple(x.shape[2:])}"
            )
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                x = nn.functional.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.head(x)


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``mps`` into an available torch device.

    ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises
    ------
    InputError
        If the name is unknown or the device is not available here.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    name = str(name).lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "mps":
        if not mps_ok:
            raise InputError("device 'mps' requested but Apple MPS is not available; use --device cpu")
        return torch.device("mps")
    raise InputError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
