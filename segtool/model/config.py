"""The U-Net configuration.

A :class:`UNetConfig` is stored as JSON inside every model file, so loading a
model rebuilds the same network and applies the same normalisation and
post-processing without the user retyping any option. How a network is
trained is :class:`segtool.train.options.TrainOptions`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from segtool.errors import InputError
from segtool.intake import INPUT_TRANSFORMS, reads_colour

__all__ = ["CHANNEL_MODES", "TARGETS", "UNetConfig", "target_channels"]

#: How image files become network input, and the input channels each gives.
CHANNEL_MODES: dict[str, int] = {"grey": 1, "rgb": 3}

#: Target types the network can learn, and the number of output channels of each.
TARGETS: dict[str, int] = {
    # background, interior, boundary (softmax over the three)
    "three_class": 3,
    # foreground logit, normalised-distance logit (sigmoid each)
    "distance": 2,
    # background, interior, boundary (softmax over the three), normalised-distance logit (sigmoid)
    "three_class_distance": 4,
}


def target_channels(target: str) -> int:
    """Return the number of output channels for a target type.

    Parameters
    ----------
    target : str
        ``"three_class"``, ``"distance"`` or ``"three_class_distance"``.

    Returns
    -------
    channels : int

    Raises
    ------
    InputError
        If ``target`` is unknown.

    Examples
    --------
    >>> target_channels("three_class"), target_channels("distance")
    (3, 2)
    """
    try:
        return TARGETS[target]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown target {target!r}; choose one of {', '.join(TARGETS)}"
        ) from None


@dataclass
class UNetConfig:
    """Architecture, normalisation, target and post-processing of a U-Net.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for grayscale fluorescence).
    channels : {"grey", "rgb"}
        How files become network input: ``"grey"`` averages RGB files to one
        channel (segtool's default reading); ``"rgb"`` keeps red, green and
        blue as three channels (grey files repeated three times), each
        normalised by its own percentiles. ``"rgb"`` needs
        ``in_channels == 3``. Models saved before this field existed read
        as ``"grey"``.
    depth : int
        Number of 2x down-sampling steps. Inputs must have height and width
        that are multiples of ``2**depth`` (prediction pads).
    base_channels : int
        Feature channels at full resolution; doubled at every level down.
    target : str
        What the network predicts: ``"three_class"`` (background / interior /
        boundary), ``"distance"`` (foreground + normalised distance map) or
        ``"three_class_distance"`` (both: the three classes + the distance).
    norm_low, norm_high : float
        Percentiles mapped to 0 and 1 by
        :func:`segtool.normalize.normalize_percentile`, per image, both when
        training and when predicting.
    patch_size : int
        Training patch size in pixels (square); also a sensible tile size.
    postprocess : dict
        Values tuned after training that prediction uses as defaults, for
        example ``{"prob_threshold": 0.5, "min_size": 10}``.

    Examples
    --------
    >>> cfg = UNetConfig(depth=2, base_channels=8, target="distance")
    >>> cfg.out_channels, cfg.size_multiple
    (2, 4)
    >>> UNetConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    in_channels: int = 1
    channels: str = "grey"
    input: str = "intensity"
    depth: int = 4
    base_channels: int = 16
    target: str = "three_class"
    norm_low: float = 1.0
    norm_high: float = 99.8
    patch_size: int = 256
    postprocess: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("in_channels", "depth", "base_channels", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, got {value!r}")
        if self.in_channels < 1:
            raise InputError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.channels not in CHANNEL_MODES:
            raise InputError(f"channels must be one of {', '.join(CHANNEL_MODES)}, got {self.channels!r}")
        if self.channels == "rgb" and self.in_channels != 3:
            raise InputError(f"channels 'rgb' needs in_channels 3, got {self.in_channels}")
        if self.input not in INPUT_TRANSFORMS:
            raise InputError(f"input must be one of {', '.join(INPUT_TRANSFORMS)}, got {self.input!r}")
        if self.input == "hematoxylin" and self.channels != "grey":
            raise InputError("input 'hematoxylin' gives one channel; it needs channels 'grey'")
        if not 1 <= self.depth <= 8:
            raise InputError(f"depth must be between 1 and 8, got {self.depth}")
        if not 1 <= self.base_channels <= 1024:
            raise InputError(f"base_channels must be between 1 and 1024, got {self.base_channels}")
        target_channels(self.target)
        for name in ("norm_low", "norm_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if not 0 <= self.norm_low < self.norm_high <= 100:
            raise InputError(
                "normalisation percentiles must satisfy 0 <= low < high <= 100, "
                f"got low={self.norm_low}, high={self.norm_high}"
            )
        if self.patch_size < self.size_multiple or self.patch_size % self.size_multiple:
            raise InputError(
                f"patch_size must be a positive multiple of 2**depth = {self.size_multiple}, "
                f"got {self.patch_size}"
            )
        if not isinstance(self.postprocess, dict):
            raise InputError(f"postprocess must be a dict, got {type(self.postprocess).__name__}")
        self.postprocess = dict(self.postprocess)

    @property
    def out_channels(self) -> int:
        """Number of output channels, derived from :attr:`target`."""
        return TARGETS[self.target]

    @property
    def reads_colour(self) -> bool:
        """Whether images are read as R, G and B (a colour network, or a transform that needs colour)."""
        return self.channels == "rgb" or reads_colour(self.input)

    @property
    def size_multiple(self) -> int:
        """Height and width of an input must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (with the derived ``out_channels`` for readers)."""
        data = asdict(self)
        data["out_channels"] = self.out_channels
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a config from :meth:`to_dict` output.

        Raises
        ------
        InputError
            If a key is unknown, a value is invalid, or ``out_channels`` does
            not match the target.
        """
        if not isinstance(data, dict):
            raise InputError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        out_channels = data.pop("out_channels", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown config keys: {', '.join(map(str, unknown))}")
        config = cls(**data)
        if out_channels is not None and out_channels != config.out_channels:
            raise InputError(
                f"out_channels {out_channels!r} does not match target {config.target!r} "
                f"({config.out_channels} channels)"
            )
        return config
