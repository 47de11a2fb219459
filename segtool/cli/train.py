"""``segtool train``: train a U-Net on image/mask folders and write one model file."""

from __future__ import annotations

import csv
import glob
import json
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from segtool.batch import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE
from segtool.cli._app import app
from segtool.cli._common import (
    Device,
    Channel,
    Debug,
    MaxMemory,
    Overwrite,
    Precision,
    Quiet,
    Recursive,
    error_line,
    exit_on_error,
    fail,
    stderr,
)
from segtool.errors import SegtoolError, first_line
from segtool.inputs import expand_inputs
from segtool.memory import parse_memory_limit
from segtool.pairing import Pair, pair_by_stem
from segtool.unet.finetune import FINETUNE_DEFAULTS
from segtool.unet.intake import INPUT_TRANSFORMS, reads_colour

PANEL_IO = "Inputs and outputs"
PANEL_NET = "Network"
PANEL_TRAIN = "Training"
PANEL_AUG = "Augmentation"
PANEL_RUN = "Hardware and resuming"

LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_f1",
    "val_ap",
    "val_ap_mean",
    "learning_rate",
    "patches",
    "seconds",
    "train_seconds",
    "patches_per_second",
    "data_seconds",
    "improved",
    "best_epoch",
)

# Options that a checkpoint fixes: given together with --resume they are ignored (and we say so).
_FIXED_BY_CHECKPOINT = (
    "depth", "base_channels", "target", "norm_low", "norm_high", "patch_size", "epochs", "batch_size",
    "patches_per_epoch", "lr", "weight_decay", "optimizer", "schedule", "patience", "foreground_fraction",
    "seed", "augment", "elastic", "rotate", "zoom", "val_fraction", "val_seed", "class_weights", "precision",
    "ema", "dice_weight", "init", "freeze_encoder", "channels", "input_transform",
)

# Options that --init takes from the parent model: given together with it they are ignored (and we say so).
_FIXED_BY_PARENT = ("depth", "base_channels", "target", "norm_low", "norm_high")


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


def output_files(model: Path) -> dict[str, Path]:
    """Files written beside a model: epoch log, training curve, checkpoint folder.

    Examples
    --------
    >>> {k: str(v) for k, v in output_files(Path("run/nuclei.pt")).items()}
    {'model': 'run/nuclei.pt', 'log': 'run/nuclei_log.csv', 'curve': 'run/nuclei_curve.png', 'checkpoints': 'run/nuclei.ckpt'}
    """
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    return {
        "model": model,
        "log": model.with_name(f"{stem}_log.csv"),
        "curve": model.with_name(f"{stem}_curve.png"),
        "checkpoints": model.with_name(f"{stem}.ckpt"),
    }


def find_pairs(specs: Sequence[str], *, recursive: bool = False) -> list[Pair]:
    """Pair images and masks from ``IMAGES MASKS`` or one folder holding ``images/`` and ``masks/``.

    Raises
    ------
    InputError
        Wrong number of arguments, missing folders, nothing found, or files
        without a partner (listed).
    """
    from segtool.errors import InputError

    if len(specs) == 1:
        root = Path(specs[0])
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            raise InputError(
                f"{root}: give IMAGES and MASKS, or one folder that holds images/ and masks/ sub-folders"
            )
        specs = [str(root / "images"), str(root / "masks")]
    if len(specs) != 2:
        raise InputError(f"expected IMAGES MASKS (2 arguments) or one folder, got {len(specs)} arguments")
    for spec in specs:
        if not Path(spec).expanduser().exists() and not glob.has_magic(spec):
            raise InputError(f"{spec}: no such file or folder")
    images = expand_inputs([specs[0]], recursive=recursive, kind="image")
    masks = expand_inputs([specs[1]], recursive=recursive, kind="labels")
    for spec, message in images.problems + masks.problems:
        raise InputError(f"{spec}: {message}")
    if not images.files:
        raise InputError(f"{specs[0]}: no image files found")
    if not masks.files:
        raise InputError(f"{specs[1]}: no mask files found")
    return pair_by_stem(images.files, masks.files)


def load_pairs(
    pairs: Sequence[Pair], *, channel: int | None, colour: bool = False, memory_limit: int | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read every pair; return the arrays, or raise listing every bad file (one per line).

    With ``colour``, images are (3, Y, X) (:func:`segtool.io.read_image`).
    ``memory_limit`` (bytes, None = no limit) is the memory guard: training
    holds every pair in memory, so each file is checked from its header
    against what the files read before it left of the limit, and refused
    before it is decoded.
    """
    from segtool.errors import InputError
    from segtool.io import read_image, read_labels
    from segtool.memory import MemoryBudget

    arrays = []
    problems = []
    held = 0

    def budget() -> MemoryBudget | None:
        if memory_limit is None:
            return None
        return MemoryBudget(limit=max(memory_limit - held, 0), command="train",
                            way_out="train on fewer or smaller (cropped) images, or raise --max-memory")

    for pair in pairs:
        try:
            image = read_image(pair.image, channel=channel, colour=colour, memory=budget()).data
        except SegtoolError as err:
            problems.append(error_line(str(pair.image), first_line(err)))
            continue
        held += image.nbytes
        try:
            labels = read_labels(pair.mask, memory=budget()).data
        except SegtoolError as err:
            problems.append(error_line(str(pair.mask), f"not an integer label image: {first_line(err)}"))
            continue
        if labels.shape != image.shape[-2:]:
            problems.append(error_line(str(pair.mask), f"mask shape {labels.shape} differs from image shape {image.shape[-2:]} ({pair.image.name})"))
            continue
        held += labels.nbytes
        arrays.append((image, labels))
    if problems:
        raise _BadPairs(problems)
    if not arrays:
        raise InputError("no usable image/mask pairs")
    return arrays, [str(p.image) for p in pairs]


class _BadPairs(SegtoolError):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(f"{len(lines)} bad image/mask file(s)")
        self.lines = lines


def write_log(path: Path, history) -> Path:
    """Write the epoch log CSV atomically (rewritten whole after every epoch)."""
    from segtool.io import atomic_output

    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOG_COLUMNS)
        for report in history:
            row = report.to_dict()
            row["patches_per_second"] = report.patches_per_second
            writer.writerow([_csv_value(row[c]) for c in LOG_COLUMNS])
    return path


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def plot_curve(path: Path, history, *, title: str = "") -> Path:
    """Training curve PNG: losses on the left, validation F1/AP at IoU 0.5 on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segtool.io import atomic_output

    epochs = [h.epoch for h in history]
    figure = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2)
    losses.plot(epochs, [h.train_loss for h in history], "o-", ms=3, label="train loss")
    if any(h.val_loss is not None for h in history):
        losses.plot(epochs, [np.nan if h.val_loss is None else h.val_loss for h in history], "o-", ms=3, label="validation loss")
        scores.plot(epochs, [h.val_f1 for h in history], "o-", ms=3, label="F1 @ IoU 0.5")
        scores.plot(epochs, [h.val_ap for h in history], "o-", ms=3, label="AP @ IoU 0.5")
        scores.plot(epochs, [h.val_ap_mean for h in history], "o-", ms=3, label="AP @ IoU 0.5:0.95")
        best = [h for h in history if h.epoch == history[-1].best_epoch]
        if best:
            scores.axvline(best[0].epoch, color="0.6", ls="--", lw=1, label=f"best epoch {best[0].epoch}")
        scores.set_ylim(0, 1)
        scores.legend(loc="best", fontsize=8)
    else:
        scores.text(0.5, 0.5, "no validation images", ha="center", va="center", transform=scores.transAxes)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.legend(fontsize=8)
    scores.set_xlabel("epoch")
    scores.set_ylabel("validation score")
    if title:
        figure.suptitle(title, fontsize=9)
    with atomic_output(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    return path


def epoch_line(report) -> str:
    """One plain-text line per epoch (the non-TTY log and the line kept above the bar)."""
    parts = [f"epoch {report.epoch}/{report.epochs}", f"loss {report.train_loss:.4f}"]
    if report.val_f1 is not None:
        parts += [
            f"val_loss {report.val_loss:.4f}",
            f"F1@0.5 {report.val_f1:.3f}",
            f"AP@0.5 {report.val_ap:.3f}",
            f"AP@0.5:0.95 {report.val_ap_mean:.3f}",
        ]
    parts += [f"lr {report.learning_rate:.2e}", f"{report.patches_per_second:.1f} patches/s", f"{report.seconds:.0f}s"]
    if report.improved:
        parts.append("best")
    return "  ".join(parts)


class _StopFlag:
    """Set by the first Ctrl-C or SIGTERM; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            "\nsegtool: stopping after the current step and writing a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _check_workers(value: str) -> str:
    """``--workers``: ``auto`` or a whole number >= 0."""
    if value == "auto" or (value.isdigit() and value.isascii()):
        return value
    raise typer.BadParameter(f"expected 'auto' or a whole number >= 0, got {value!r}")


def _explicit(ctx: typer.Context, names: Sequence[str]) -> list[str]:
    given = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append("--" + name.replace("_", "-"))
    return given


@app.command(rich_help_panel="U-Net")
def train(
    ctx: typer.Context,
    data: Annotated[
        list[str],
        typer.Argument(
            help="IMAGES MASKS (folders or glob patterns; masks pair with images by file name, "
            "optionally ending in _mask, _masks, _labels, _cp_masks), or one folder holding images/ and masks/.",
            show_default=False,
            metavar="IMAGES MASKS | FOLDER",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Model file to write (e.g. nuclei.pt).", rich_help_panel=PANEL_IO, dir_okay=False),
    ],
    val: Annotated[
        Optional[tuple[str, str]],
        typer.Option(
            "--val",
            help="Validation IMAGES MASKS (instead of holding out --val-fraction of the training images).",
            rich_help_panel=PANEL_IO,
            show_default=False,
            metavar="IMAGES MASKS",
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of whole training images held out for validation.", rich_help_panel=PANEL_IO),
    ] = 0.15,
    val_seed: Annotated[
        Optional[int],
        typer.Option(
            "--val-seed",
            help="Seed that picks the held-out validation images (default: --seed). Give it to compare runs with other "
            "--seed values on the same validation images.",
            rich_help_panel=PANEL_IO,
        ),
    ] = None,
    channel: Channel = None,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary of the run on stdout.", rich_help_panel=PANEL_IO)] = False,
    init: Annotated[
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
    ] = None,
    channels: Annotated[
        Optional[Channels],
        typer.Option(
            "--channels",
            help="Network input: grey (RGB files averaged to one channel; the default) or rgb (three channels, each "
            "normalised by its own percentiles; grey files repeated). With --init, default: the parent's; a grey "
            "parent's first convolution is then spread over R, G and B.",
            rich_help_panel=PANEL_NET,
            show_default=False,
        ),
    ] = None,
    input_transform: Annotated[
        Optional[InputTransform],
        typer.Option(
            "--input",
            help="Transform before normalisation, stored in the model and applied when predicting: intensity (values as "
            "read; the default), inverted (dark objects become bright) or hematoxylin (hematoxylin optical density of "
            "RGB stained tissue; grey images read as R = G = B). With --init, default: the parent's.",
            rich_help_panel=PANEL_NET,
            show_default=False,
        ),
    ] = None,
    freeze_encoder: Annotated[
        int,
        typer.Option(
            "--freeze-encoder",
            min=0,
            help="With --init: keep the encoder's weights fixed for the first N epochs (the decoder adapts first).",
            rich_help_panel=PANEL_NET,
            metavar="N",
        ),
    ] = 0,
    target: Annotated[
        Target,
        typer.Option(
            "--target",
            help="What the network learns: three_class (background/interior/boundary), distance (foreground + normalised distance) or three_class_distance (both; seeds and splits from the distance).",
            rich_help_panel=PANEL_NET,
        ),
    ] = Target.three_class,
    depth: Annotated[int, typer.Option("--depth", min=1, max=8, help="Down-sampling levels of the U-Net.", rich_help_panel=PANEL_NET)] = 4,
    base_channels: Annotated[
        int, typer.Option("--base-channels", min=1, max=1024, help="Channels at full resolution (doubled per level).", rich_help_panel=PANEL_NET)
    ] = 16,
    norm_low: Annotated[float, typer.Option("--norm-low", min=0.0, max=100.0, help="Low percentile mapped to 0 (per image).", rich_help_panel=PANEL_NET)] = 1.0,
    norm_high: Annotated[float, typer.Option("--norm-high", min=0.0, max=100.0, help="High percentile mapped to 1 (per image).", rich_help_panel=PANEL_NET)] = 99.8,
    patch_size: Annotated[int, typer.Option("--patch-size", min=8, help="Training patch size (a multiple of 2**depth).", rich_help_panel=PANEL_TRAIN)] = 256,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Maximum number of epochs.", rich_help_panel=PANEL_TRAIN)] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Patches per step.", rich_help_panel=PANEL_TRAIN)] = 8,
    patches_per_epoch: Annotated[
        Optional[int],
        typer.Option("--patches-per-epoch", min=1, help="Patches per epoch. Default: as many pixels as the training images hold.", rich_help_panel=PANEL_TRAIN),
    ] = None,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (warm-up, then cosine decay).", rich_help_panel=PANEL_TRAIN)] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="Weight decay.", rich_help_panel=PANEL_TRAIN)] = 1e-4,
    optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="Optimiser.", rich_help_panel=PANEL_TRAIN)] = Optimizer.adamw,
    schedule: Annotated[Schedule, typer.Option("--schedule", help="Learning-rate schedule after warm-up.", rich_help_panel=PANEL_TRAIN)] = Schedule.cosine,
    patience: Annotated[
        int, typer.Option("--patience", min=0, help="Stop after this many epochs without a better validation F1 (0: never).", rich_help_panel=PANEL_TRAIN)
    ] = 20,
    foreground_fraction: Annotated[
        float, typer.Option("--foreground-fraction", min=0.0, max=1.0, help="Share of patches placed on an object.", rich_help_panel=PANEL_TRAIN)
    ] = 0.8,
    class_weights: Annotated[
        bool,
        typer.Option(
            "--class-weights/--no-class-weights",
            help="three_class: weight cross-entropy by class rarity (biases probabilities; thresholds then need tuning).",
            rich_help_panel=PANEL_TRAIN,
        ),
    ] = False,
    dice_weight: Annotated[
        float,
        typer.Option(
            "--dice-weight",
            min=0.0,
            help="Weight of the soft Dice term added to the cross-entropy loss (0: cross-entropy only).",
            rich_help_panel=PANEL_TRAIN,
        ),
    ] = 1.0,
    ema: Annotated[
        float,
        typer.Option(
            "--ema",
            min=0.0,
            max=0.9999,
            help="Keep a moving average of the weights with this decay (e.g. 0.999) and validate and save it (0: off).",
            rich_help_panel=PANEL_TRAIN,
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, data and --threads: same weights).", rich_help_panel=PANEL_TRAIN)] = 0,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Flips, 90-degree rotations, intensity scale/shift, noise.", rich_help_panel=PANEL_AUG)
    ] = True,
    elastic: Annotated[bool, typer.Option("--elastic", help="Add elastic deformations.", rich_help_panel=PANEL_AUG)] = False,
    rotate: Annotated[bool, typer.Option("--rotate", help="Add rotations by any angle (read from the image around the patch).", rich_help_panel=PANEL_AUG)] = False,
    zoom: Annotated[
        float,
        typer.Option("--zoom", min=0.0, max=1.0, help="Add random zoom by a factor between 1/(1+Z) and 1+Z (0: off).", rich_help_panel=PANEL_AUG),
    ] = 0.0,
    device: Annotated[Device, typer.Option("--device", help="auto picks CUDA, then Apple MPS, then the CPU.", rich_help_panel=PANEL_RUN)] = Device.auto,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="Forward-pass arithmetic: bf16 (bfloat16 autocast, about 2x faster on CPUs with AVX512-BF16/AMX and recent GPUs), "
            "fp32, or auto (bf16 where the hardware runs it natively).",
            rich_help_panel=PANEL_RUN,
        ),
    ] = Precision.auto,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for PyTorch. Default: PyTorch's choice.", rich_help_panel=PANEL_RUN)] = None,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Data worker processes that sample and augment patches while the network trains. auto: none on a CPU "
            "with 2 cores or fewer, a quarter of the cores on a larger CPU, all cores but one (at most 16) with a GPU. "
            "Any count from 1 up gives the same weights; 0 draws other patches (from the same distribution). On the CPU, without "
            "--threads, PyTorch gets one thread fewer per worker.",
            rich_help_panel=PANEL_RUN,
            callback=_check_workers,
            metavar="N|auto",
        ),
    ] = "auto",
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", help="Continue from a checkpoint (<model>.ckpt/last.pt) with its settings.", rich_help_panel=PANEL_RUN, dir_okay=False),
    ] = None,
    max_memory: MaxMemory = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a U-Net on images and instance masks (0 = background) and write a model file.

    Also writes, beside the model: <stem>_log.csv (one row per epoch), <stem>_curve.png and
    <stem>.ckpt/ (last.pt to --resume, best.pt the best epoch so far). Ctrl-C stops cleanly with a
    resumable checkpoint.
    """
    from segtool.unet.augment import AugmentOptions
    from segtool.unet.config import CHANNEL_MODES, UNetConfig
    from segtool.unet.dataset import split_validation
    from segtool.unet.train import (
        TrainOptions,
        build_metadata,
        read_checkpoint_settings,
    )

    err = stderr()
    files = output_files(output)
    launched_as_segtool = bool(sys.argv) and Path(sys.argv[0]).name in ("segtool", "__main__.py")
    command = shlex.join(["segtool", *sys.argv[1:]]) if launched_as_segtool else None

    # ---- settings: from the options, or from the checkpoint
    resume_state: dict[str, Any] = {}
    parent: dict[str, Any] | None = None
    init_weights = None
    with exit_on_error(debug):
        if resume is not None:
            with exit_on_error(debug, where=str(resume)):
                config, options, resume_state = read_checkpoint_settings(resume)
            parent = resume_state.get("extra", {}).get("parent")
            options.device = device.value
            ignored = _explicit(ctx, _FIXED_BY_CHECKPOINT)
            if ignored and not quiet:
                err.print(f"segtool: note: resuming with the checkpoint's settings; ignoring {', '.join(ignored)}", markup=False, highlight=False)
        elif init is not None:
            from dataclasses import replace

            from segtool.unet.finetune import child_config, load_init

            with exit_on_error(debug, where=init):
                parent_model = load_init(init)
            mode = channels.value if channels is not None else parent_model.config.channels
            config = child_config(parent_model.config, channels=mode,
                                  input_transform=input_transform.value if input_transform is not None else None)
            if _explicit(ctx, ["patch_size"]):
                config = replace(config, patch_size=patch_size)
            init_weights = parent_model.weights_for(config)
            parent = parent_model.record
            ignored = _explicit(ctx, _FIXED_BY_PARENT)
            if ignored and not quiet:
                err.print(f"segtool: note: --init takes the network from {init}; ignoring {', '.join(ignored)}", markup=False, highlight=False)
        else:
            if freeze_encoder:
                fail("--freeze-encoder needs --init (a random encoder has nothing to keep)", code=EXIT_USAGE)
            mode = channels.value if channels is not None else "grey"
            config = UNetConfig(
                in_channels=CHANNEL_MODES[mode],
                channels=mode,
                input=input_transform.value if input_transform is not None else "intensity",
                depth=depth,
                base_channels=base_channels,
                target=target.value,
                norm_low=norm_low,
                norm_high=norm_high,
                patch_size=patch_size,
            )
        if resume is None:
            tuned = init is not None
            options = TrainOptions(
                epochs=epochs,
                batch_size=batch_size,
                patches_per_epoch=patches_per_epoch,
                learning_rate=FINETUNE_DEFAULTS["lr"] if tuned and not _explicit(ctx, ["lr"]) else lr,
                warmup_epochs=FINETUNE_DEFAULTS["warmup_epochs"] if tuned else 1.0,
                freeze_encoder_epochs=freeze_encoder,
                weight_decay=weight_decay,
                optimizer=optimizer.value,
                schedule=schedule.value,
                patience=patience,
                foreground_fraction=foreground_fraction,
                class_weighting=class_weights,
                augment=AugmentOptions(elastic=elastic, rotate=rotate, zoom=zoom) if augment else AugmentOptions.none(),
                seed=seed,
                device=device.value,
                ema_decay=ema,
                dice_weight=dice_weight,
            )
        from segtool.unet.loader import auto_workers, resume_workers
        from segtool.unet.model import resolve_device
        from segtool.unet.precision import resolve_precision

        resolved_device = resolve_device(options.device)
        requested_workers = auto_workers(resolved_device) if workers == "auto" else int(workers)
        if resume is None:
            # stored resolved, so the model card says what the run used and --resume repeats it
            options.precision = resolve_precision(precision.value, resolved_device)
            options.workers = requested_workers
        else:
            # the checkpoint's patches came from the training process (0) or from workers: resuming keeps that
            options.workers = resume_workers(options.workers, requested_workers)
            if workers != "auto" and options.workers != requested_workers and not quiet:
                err.print(
                    f"segtool: note: the checkpoint's run used {'no' if options.workers == 0 else 'some'} data workers; "
                    f"continuing with --workers {options.workers}",
                    markup=False,
                    highlight=False,
                )

    # ---- refuse to overwrite before any work
    existing = [str(files[k]) for k in ("model", "log", "curve") if files[k].exists()]
    if resume is not None:
        existing = [p for p in existing if p == str(files["model"])]
    if existing and not overwrite:
        fail(f"{', '.join(existing)} exist(s); use --overwrite to replace", code=1)
    last = files["checkpoints"] / "last.pt"
    if resume is None and last.exists() and not overwrite:
        fail(f"{last} exists from an earlier run; continue it with --resume {last}, or use --overwrite to start again", code=1)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    elif options.workers and resolved_device.type == "cpu":
        import torch

        # PyTorch takes a thread per core by default; with the cores busy elsewhere (data workers) its threads
        # spin waiting for one another: a small step ran 30-60x slower with 2 threads than with 1 on the busy 2-core host
        torch.set_num_threads(max(1, torch.get_num_threads() - options.workers))

    # ---- data
    fraction: float | None = None
    split_seed = options.seed if val_seed is None else val_seed
    if val is None:
        fraction = val_fraction
        if resume is not None:
            extra = resume_state.get("extra", {})
            stored = extra.get("val_fraction", val_fraction)
            if stored is None:
                fail("the checkpoint's run used --val; give the same --val IMAGES MASKS again", code=EXIT_USAGE)
            fraction = float(stored)
            split_seed = int(extra.get("val_seed", options.seed))
    try:
        memory_limit = parse_memory_limit(max_memory)
    except SegtoolError as error:
        fail(first_line(error), code=EXIT_USAGE)
    with exit_on_error(debug):
        try:
            pairs = find_pairs(data, recursive=recursive)
            colour = config.channels == "rgb" or reads_colour(config.input)
            arrays, names = load_pairs(pairs, channel=channel, colour=colour, memory_limit=memory_limit)
            if val is not None:
                val_pairs = find_pairs(list(val), recursive=recursive)
                if memory_limit is not None:  # the training pairs are held too
                    memory_limit -= sum(image.nbytes + labels.nbytes for image, labels in arrays)
                val_arrays, val_names = load_pairs(val_pairs, channel=channel, colour=colour,
                                                   memory_limit=None if memory_limit is None else max(memory_limit, 0))
                train_arrays, train_names = arrays, names
            else:
                train_idx, val_idx = split_validation(len(arrays), fraction, np.random.default_rng(split_seed))
                train_arrays = [arrays[i] for i in train_idx]
                train_names = [names[i] for i in train_idx]
                val_arrays = [arrays[i] for i in val_idx]
                val_names = [names[i] for i in val_idx]
        except _BadPairs as bad:
            for line in bad.lines:
                print(line, file=sys.stderr)
            fail(f"{len(bad.lines)} bad image/mask file(s); nothing trained")

    if not quiet:
        err.print(
            f"segtool: training on {len(train_arrays)} images, validating on {len(val_arrays)}; "
            f"{config.target}, depth {config.depth}, {config.base_channels} base channels, patch {config.patch_size}, "
            f"device {resolved_device}, {options.precision}, {options.workers} data workers",
            markup=False,
            highlight=False,
        )

    # ---- train
    show_bar = not quiet and err.is_terminal
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show_bar,
    )
    history: list = []
    bar = {"id": None, "phase": None}

    def on_step(step) -> None:
        if not show_bar:
            return
        description = f"epoch {step.epoch}/{options.epochs} {'train' if step.phase == 'train' else 'validate'}"
        if bar["id"] is None or bar["phase"] != (step.epoch, step.phase):
            if bar["id"] is not None:
                progress.remove_task(bar["id"])
            bar["id"] = progress.add_task(description, total=step.steps, info="")
            bar["phase"] = (step.epoch, step.phase)
        if step.loss is not None:
            progress.update(bar["id"], completed=step.step, info=f"loss {step.loss:.4f}")
        else:
            progress.update(bar["id"], completed=step.step)

    def on_epoch(report) -> None:
        history.append(report)
        write_log(files["log"], history)
        if not quiet:
            progress.console.print(epoch_line(report), markup=False, highlight=False)

    from segtool.unet.train import train_model

    stop = _StopFlag()
    try:
        arguments = {
            "train_pairs": train_arrays,
            "val_pairs": val_arrays,
            "config": config,
            "options": options,
            "checkpoint_dir": files["checkpoints"],
            "train_names": train_names,
            "val_names": val_names,
            "on_step": on_step,
            "on_epoch": on_epoch,
            "resume_from": resume,
            "checkpoint_extra": {"val_fraction": fraction, "val_seed": split_seed, "parent": parent},
            "init_weights": init_weights,
        }
        result = _run(train_model, progress, history, resume_state, debug, stop, arguments)
    except KeyboardInterrupt:
        progress.stop()
        last = files["checkpoints"] / "last.pt"
        where = f"; the checkpoint of the last finished epoch is {last}" if last.exists() else ""
        print(f"\nsegtool: aborted{where}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    progress.stop()

    if result.history:
        with exit_on_error(debug):
            plot_curve(files["curve"], result.history, title=files["model"].name)
            write_log(files["log"], result.history)
    if result.stop_reason == "interrupted":
        code = EXIT_TERMINATED if stop.signal == signal.SIGTERM else EXIT_INTERRUPTED
        again = _resume_command(data, output, result.last_checkpoint, launched_as_segtool)
        print(
            f"segtool: interrupted: checkpoint written to {result.last_checkpoint}; continue with:\n  {again}",
            file=sys.stderr,
        )
        raise typer.Exit(code)

    from segtool.unet.modelfile import save_model

    extra = {
        "parent": parent,
        "training_files": [Path(n).name for n in train_names],
        "validation_files": [Path(n).name for n in val_names],
        "validation_source": "--val" if val is not None else f"held out {len(val_names)} of {len(names)} images (seed {split_seed})",
    }
    metadata = build_metadata(result, command=command, extra=extra)
    with exit_on_error(debug):
        save_model(files["model"], result.net, config, metadata=metadata, overwrite=overwrite)
    best = result.best
    if not quiet:
        summary = f"segtool: {result.stop_reason.replace('_', ' ')} after {len(result.history)} epochs; best epoch {result.best_epoch}"
        if best is not None and best.val_f1 is not None:
            summary += f" (validation F1@0.5 {best.val_f1:.3f}, AP@0.5 {best.val_ap:.3f})"
        err.print(summary, markup=False, highlight=False)
    if json_out:
        print(
            json.dumps(
                {
                    "model": str(files["model"]),
                    "log": str(files["log"]),
                    "curve": str(files["curve"]),
                    "checkpoints": str(files["checkpoints"]),
                    "stop_reason": result.stop_reason,
                    "epochs_run": len(result.history),
                    "best_epoch": result.best_epoch,
                    "validation": metadata["validation"],
                    "training_data": result.train_data,
                }
            )
        )
    else:
        print(files["model"])


def _resume_command(data: Sequence[str], output: Path, checkpoint: Path, from_argv: bool) -> str:
    """The command line that continues an interrupted run: the original one plus ``--resume``."""
    if from_argv:
        args = list(sys.argv[1:])
        kept = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg == "--resume":
                skip = True
                continue
            if arg.startswith("--resume="):
                continue
            kept.append(arg)
        return shlex.join(["segtool", *kept, "--resume", str(checkpoint)])
    return shlex.join(["segtool", "train", *data, "-o", str(output), "--resume", str(checkpoint)])


def _run(train_model, progress, history, resume_state, debug, stop, kwargs):
    """Call ``train_model`` with the stop flag installed and the progress bar live."""
    with exit_on_error(debug), stop, progress:
        if resume_state:
            # the log of the epochs before the interruption comes from the checkpoint
            from segtool.unet.train import EpochReport

            history.extend(EpochReport(**h) for h in resume_state["loop"]["history"])
        return train_model(stop_requested=stop, **kwargs)
