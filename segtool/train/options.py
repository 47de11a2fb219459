"""The options of a training run: everything that is not the network's config.

:class:`TrainOptions` (optimiser, schedule, patches, augmentation, seed) is
stored as JSON (its ``to_dict()``) in training checkpoints and in the model
file's metadata, so the model layer (:mod:`segtool.model`) needs nothing of
this module. Torch-free: the CLI shows :data:`FINETUNE_DEFAULTS` in ``--help``
without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from segtool.errors import InputError
from segtool.train.augment import AugmentOptions

__all__ = ["FINETUNE_DEFAULTS", "TrainOptions"]

#: Training defaults with ``--init`` (explicit options win). The learning rate is scratch training's: on
#: dsb2018_histo train the usual lower fine-tuning rate (3e-4) learnt less in the same steps than 1e-3, as
#: those images invert the parent's contrast (MODELS.md, "Fine-tuning defaults"). The warm-up is short (a
#: quarter epoch instead of one): the start is a trained network, not a random one.
FINETUNE_DEFAULTS: dict[str, float] = {"lr": 1e-3, "warmup_epochs": 0.25}


@dataclass
class TrainOptions:
    """How to train (everything that is not the network's :class:`segtool.model.config.UNetConfig`).

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
