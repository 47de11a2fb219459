"""The U-Net configuration, and the options of a training run.

A :class:`UNetConfig` is stored as JSON inside every model file, so loading a
model rebuilds the same network and applies the same normalisation and
post-processing without the user retyping any option. :class:`TrainOptions`
(optimiser, schedule, patches, augmentation, seed) is stored in training
checkpoints and in the model's metadata.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from segtool.errors import InputError
from segtool.train.augment import AugmentOptions
from segtool.intake import INPUT_TRANSFORMS, reads_colour

__all__ = ["CHANNEL_MODES", "FINETUNE_DEFAULTS", "TARGETS", "UNetConfig", "target_channels"]

#: Training defaults with ``--init`` (explicit options win). The learning rate is scratch training's: on
#: dsb2018_histo train the usual lower fine-tuning rate (3e-4) learnt less in the same steps than 1e-3, as
#: those images invert the parent's contrast (MODELS.md, "Fine-tuning defaults"). The warm-up is short (a
#: quarter epoch instead of one): the start is a trained network, not a random one.
FINETUNE_DEFAULTS: dict[str, float] = {"lr": 1e-3, "warmup_epochs": 0.25}

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


@dataclass
class TrainOptions:
    """How to train (everything that is not the network's :class:`UNetConfig`).

    Parameters
    ----------
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Patches per optimiser step.
    patches_per_epoch : int or None
        Patches drawn per epoch; None draws about as many pixels as the
        training images hold (at least one batch).
    learning_rate : float
        Peak learning rate.
    weight_decay : float
        AdamW decoupled weight decay (Adam: L2 penalty).
    optimizer : {"adamw", "adam"}
    schedule : {"cosine", "constant"}
        After a linear warm-up of ``warmup_epochs``, cosine decay to
        ``min_lr_fraction * learning_rate`` at the last epoch, or constant.
    warmup_epochs : float
    min_lr_fraction : float
    patience : int
        Stop after this many epochs without a better validation F1 (an equal
        F1 with a lower validation loss counts as better; without validation
        images, a lower training loss); 0 never stops early.
    foreground_fraction : float
        Share of patches placed to contain an object pixel.
    dice_weight : float
        Weight of the soft Dice term of the loss.
    class_weighting : bool
        Weight cross-entropy classes by their frequency (three_class). Off by
        default: weighted cross-entropy biases the softmax towards the rare
        classes (its optimum is ``p_c`` proportional to ``w_c`` times the true
        posterior), so background probability is underestimated and objects
        merge at the usual 0.5 thresholds. Measured on dsb2018_fluo train
        (5 x 48 patches): validation F1@0.5 0.07 with weights
        [0.76, 1.94, 5.14], 0.61 when the same maps are divided by the
        weights again.
    augment : AugmentOptions
    seed : int
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    precision : {"fp32", "bf16"}
        Arithmetic of the forward pass: float32, or bfloat16 autocast with a
        channels-last memory layout (about 2x faster where the hardware has
        bfloat16; see :mod:`segtool.model.precision`). Weights, optimiser
        state and loss stay float32 either way. Checkpoints written before
        this option existed resume as ``fp32``.
    ema_decay : float
        0 (off), or the decay of an exponential moving average of the
        weights kept beside the trained ones (for example 0.999, an average
        over about the last 1000 steps). When on, validation, the best epoch
        and the saved model use the averaged weights, which are less noisy
        than the weights of any single step. Checkpoints written before this
        option existed resume with it off.
    workers : int
        Data worker processes that sample and augment patches while the
        network trains (:mod:`segtool.train.loader`); 0 makes them in the
        training process. Any count >= 1 gives the same patches; 0 draws
        other ones (the scheme of segtool before workers existed), so a
        resumed run keeps 0, or >= 1, as it started. Checkpoints written
        before this option existed resume with 0.
    freeze_encoder_epochs : int
        For this many first epochs only the decoder and head learn; the
        encoder's weights stay as they started (its BatchNorm statistics
        still follow the new images). Meant for fine-tuning, where the
        encoder comes from a parent model (``segtool train --init``).
    """

    epochs: int = 100
    batch_size: int = 8
    patches_per_epoch: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_fraction: float = 0.02
    patience: int = 20
    foreground_fraction: float = 0.8
    dice_weight: float = 1.0
    class_weighting: bool = False
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    ema_decay: float = 0.0
    workers: int = 0
    freeze_encoder_epochs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentOptions.from_dict(self.augment)
        for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0), ("workers", 0), ("freeze_encoder_epochs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.patches_per_epoch is not None and (
            not isinstance(self.patches_per_epoch, int) or self.patches_per_epoch < 1
        ):
            raise InputError(f"patches_per_epoch must be >= 1, got {self.patches_per_epoch!r}")
        for name in ("learning_rate", "weight_decay", "warmup_epochs", "min_lr_fraction", "dice_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adamw", "adam"):
            raise InputError(f"optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float)) or not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must be a number in [0, 1), got {self.ema_decay!r}")
        self.ema_decay = float(self.ema_decay)
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["augment"] = self.augment.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
