"""The options of ``segtool train``, declared once: panels, choices and the Typer declarations.

:mod:`segtool.cli.train` uses them in its command's signature; the help text is read from here.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from segtool.cli.options import Device, Precision
from segtool.train.options import FINETUNE_DEFAULTS
from segtool.intake import INPUT_TRANSFORMS

__all__ = [
    "Channels",
    "Optimizer",
    "Schedule",
    "Target",
    "check_workers",
    "DataOpt",
    "OutputOpt",
    "ValOpt",
    "ValFractionOpt",
    "ValSeedOpt",
    "JsonOutOpt",
    "InitOpt",
    "ChannelsOpt",
    "InputTransform",
    "InputTransformOpt",
    "FreezeEncoderOpt",
    "TargetOpt",
    "DepthOpt",
    "BaseChannelsOpt",
    "NormLowOpt",
    "NormHighOpt",
    "PatchSizeOpt",
    "EpochsOpt",
    "BatchSizeOpt",
    "PatchesPerEpochOpt",
    "LrOpt",
    "WeightDecayOpt",
    "OptimizerOpt",
    "ScheduleOpt",
    "PatienceOpt",
    "ForegroundFractionOpt",
    "ClassWeightsOpt",
    "DiceWeightOpt",
    "EmaOpt",
    "SeedOpt",
    "AppearanceOpt",
    "AugmentOpt",
    "ElasticOpt",
    "RotateOpt",
    "ZoomOpt",
    "DeviceOpt",
    "PrecisionOpt",
    "ThreadsOpt",
    "WorkersOpt",
    "ResumeOpt",
]

PANEL_IO = "Inputs and outputs"
PANEL_NET = "Network"
PANEL_TRAIN = "Training"
PANEL_AUG = "Augmentation"
PANEL_RUN = "Hardware and resuming"


class Channels(str, Enum):
    grey = "grey"
    rgb = "rgb"


InputTransform = Enum("InputTransform", {name: name for name in INPUT_TRANSFORMS}, type=str)


class Target(str, Enum):
    three_class = "three_class"
    distance = "distance"
    three_class_distance = "three_class_distance"


class Optimizer(str, Enum):
    adamw = "adamw"
    adam = "adam"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


def check_workers(value: str) -> str:
    """``--workers``: ``auto`` or a whole number >= 0."""
    if value == "auto" or (value.isdigit() and value.isascii()):
        return value
    raise typer.BadParameter(f"expected 'auto' or a whole number >= 0, got {value!r}")


DataOpt = Annotated[
    list[str],
    typer.Argument(
        help="IMAGES MASKS (folders or glob patterns; masks pair with images by file name, "
        "optionally ending in _mask, _masks, _labels, _cp_masks, _seg), or one folder holding images/ and masks/.",
        show_default=False,
        metavar="IMAGES MASKS | FOLDER",
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option("--output", "-o", help="Model file to write (e.g. nuclei.pt).", rich_help_panel=PANEL_IO, dir_okay=False),
]
ValOpt = Annotated[
    Optional[tuple[str, str]],
    typer.Option(
        "--val",
        help="Validation IMAGES MASKS (instead of holding out --val-fraction of the training images).",
        rich_help_panel=PANEL_IO,
        show_default=False,
        metavar="IMAGES MASKS",
    ),
]
ValFractionOpt = Annotated[
    float,
    typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of whole training images held out for validation.", rich_help_panel=PANEL_IO),
]
ValSeedOpt = Annotated[
    Optional[int],
    typer.Option(
        "--val-seed",
        help="Seed that picks the held-out validation images (default: --seed). Give it to compare runs with other "
        "--seed values on the same validation images.",
        rich_help_panel=PANEL_IO,
    ),
]
JsonOutOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary of the run on stdout.", rich_help_panel=PANEL_IO)]
InitOpt = Annotated[
    Optional[str],
    typer.Option(
        "--init",
        help="Fine-tune: start from this model (a file, or a shipped model's name such as nuclei): its weights, "
        "architecture, target, normalisation and tuned post-processing. Default learning rate then "
        f"{FINETUNE_DEFAULTS['lr']:g}, warm-up {FINETUNE_DEFAULTS['warmup_epochs']:g} epoch.",
        rich_help_panel=PANEL_NET,
        show_default=False,
        metavar="MODEL",
    ),
]
ChannelsOpt = Annotated[
    Optional[Channels],
    typer.Option(
        "--channels",
        help="Network input: grey (RGB files averaged to one channel; the default) or rgb (three channels, each "
        "normalised by its own percentiles; grey files repeated). With --init, default: the parent's; a grey "
        "parent's first convolution is then spread over R, G and B.",
        rich_help_panel=PANEL_NET,
        show_default=False,
    ),
]
InputTransformOpt = Annotated[
    Optional[InputTransform],
    typer.Option(
        "--input",
        help="Transform before normalisation, stored in the model and applied when predicting: intensity (values as "
        "read; the default), inverted (dark objects become bright) or hematoxylin (hematoxylin optical density of "
        "RGB stained tissue; grey images read as R = G = B). With --init, default: the parent's.",
        rich_help_panel=PANEL_NET,
        show_default=False,
    ),
]
FreezeEncoderOpt = Annotated[
    int,
    typer.Option(
        "--freeze-encoder",
        min=0,
        help="With --init: keep the encoder's weights fixed for the first N epochs (the decoder adapts first).",
        rich_help_panel=PANEL_NET,
        metavar="N",
    ),
]
TargetOpt = Annotated[
    Target,
    typer.Option(
        "--target",
        help="What the network learns: three_class (background/interior/boundary), distance (foreground + normalised distance) or three_class_distance (both; seeds and splits from the distance).",
        rich_help_panel=PANEL_NET,
    ),
]
DepthOpt = Annotated[int, typer.Option("--depth", min=1, max=8, help="Down-sampling levels of the U-Net.", rich_help_panel=PANEL_NET)]
BaseChannelsOpt = Annotated[
    int, typer.Option("--base-channels", min=1, max=1024, help="Channels at full resolution (doubled per level).", rich_help_panel=PANEL_NET)
]
NormLowOpt = Annotated[float, typer.Option("--norm-low", min=0.0, max=100.0, help="Low percentile mapped to 0 (per image).", rich_help_panel=PANEL_NET)]
NormHighOpt = Annotated[float, typer.Option("--norm-high", min=0.0, max=100.0, help="High percentile mapped to 1 (per image).", rich_help_panel=PANEL_NET)]
PatchSizeOpt = Annotated[int, typer.Option("--patch-size", min=8, help="Training patch size (a multiple of 2**depth).", rich_help_panel=PANEL_TRAIN)]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Maximum number of epochs.", rich_help_panel=PANEL_TRAIN)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Patches per step.", rich_help_panel=PANEL_TRAIN)]
PatchesPerEpochOpt = Annotated[
    Optional[int],
    typer.Option("--patches-per-epoch", min=1, help="Patches per epoch. Default: as many pixels as the training images hold.", rich_help_panel=PANEL_TRAIN),
]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (warm-up, then cosine decay).", rich_help_panel=PANEL_TRAIN)]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", min=0.0, help="Weight decay.", rich_help_panel=PANEL_TRAIN)]
OptimizerOpt = Annotated[Optimizer, typer.Option("--optimizer", help="Optimiser.", rich_help_panel=PANEL_TRAIN)]
ScheduleOpt = Annotated[Schedule, typer.Option("--schedule", help="Learning-rate schedule after warm-up.", rich_help_panel=PANEL_TRAIN)]
PatienceOpt = Annotated[
    int, typer.Option("--patience", min=0, help="Stop after this many epochs without a better validation F1 (0: never).", rich_help_panel=PANEL_TRAIN)
]
ForegroundFractionOpt = Annotated[
    float, typer.Option("--foreground-fraction", min=0.0, max=1.0, help="Share of patches placed on an object.", rich_help_panel=PANEL_TRAIN)
]
ClassWeightsOpt = Annotated[
    bool,
    typer.Option(
        "--class-weights/--no-class-weights",
        help="three_class: weight cross-entropy by class rarity (biases probabilities; thresholds then need tuning).",
        rich_help_panel=PANEL_TRAIN,
    ),
]
DiceWeightOpt = Annotated[
    float,
    typer.Option(
        "--dice-weight",
        min=0.0,
        help="Weight of the soft Dice term added to the cross-entropy loss (0: cross-entropy only).",
        rich_help_panel=PANEL_TRAIN,
    ),
]
EmaOpt = Annotated[
    float,
    typer.Option(
        "--ema",
        min=0.0,
        max=0.9999,
        help="Keep a moving average of the weights with this decay (e.g. 0.999) and validate and save it (0: off).",
        rich_help_panel=PANEL_TRAIN,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same seed, data and --threads: same weights).", rich_help_panel=PANEL_TRAIN)]
AugmentOpt = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Flips, 90-degree rotations, intensity scale/shift, noise.", rich_help_panel=PANEL_AUG)
]
ElasticOpt = Annotated[bool, typer.Option("--elastic", help="Add elastic deformations.", rich_help_panel=PANEL_AUG)]
RotateOpt = Annotated[bool, typer.Option("--rotate", help="Add rotations by any angle (read from the image around the patch).", rich_help_panel=PANEL_AUG)]
ZoomOpt = Annotated[
    float,
    typer.Option("--zoom", min=0.0, max=1.0, help="Add random zoom by a factor between 1/(1+Z) and 1+Z (0: off).", rich_help_panel=PANEL_AUG),
]
AppearanceOpt = Annotated[
    bool,
    typer.Option(
        "--appearance",
        help="Add other microscopes' appearance: gamma, blur, shot noise, camera offset and uneven background, "
        "saturated objects, JPEG (each on 15% of patches).",
        rich_help_panel=PANEL_AUG,
    ),
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto picks CUDA, then Apple MPS, then the CPU.", rich_help_panel=PANEL_RUN)]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Forward-pass arithmetic: bf16 (bfloat16 autocast, about 2x faster on CPUs with AVX512-BF16/AMX and recent GPUs), "
        "fp32, or auto (bf16 where the hardware runs it natively).",
        rich_help_panel=PANEL_RUN,
    ),
]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for PyTorch. Default: PyTorch's choice.", rich_help_panel=PANEL_RUN)]
WorkersOpt = Annotated[
    str,
    typer.Option(
        "--workers",
        help="Data worker processes that sample and augment patches while the network trains. auto: none on a CPU "
        "with 2 cores or fewer, a quarter of the cores on a larger CPU, all cores but one (at most 16) with a GPU. "
        "Any count from 1 up gives the same weights; 0 draws other patches (from the same distribution). On the CPU, without "
        "--threads, PyTorch gets one thread fewer per worker.",
        rich_help_panel=PANEL_RUN,
        callback=check_workers,
        metavar="N|auto",
    ),
]
ResumeOpt = Annotated[
    Optional[Path],
    typer.Option("--resume", help="Continue from a checkpoint (<model>.ckpt/last.pt) with its settings.", rich_help_panel=PANEL_RUN, dir_okay=False),
]
