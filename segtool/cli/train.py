"""``segtool train``: train a U-Net on image/mask folders and write one model file."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from segtool.cli.application import app
from segtool.cli.messages import error_line, exit_on_error, fail, stderr
from segtool.cli.options import Device, Channel, Debug, MaxMemory, Overwrite, Precision, Quiet, Recursive
from segtool.cli.train_options import (
    Optimizer,
    Schedule,
    Target,
    DataOpt,
    OutputOpt,
    ValOpt,
    ValFractionOpt,
    ValSeedOpt,
    JsonOutOpt,
    InitOpt,
    ChannelsOpt,
    InputTransformOpt,
    FreezeEncoderOpt,
    TargetOpt,
    DepthOpt,
    BaseChannelsOpt,
    NormLowOpt,
    NormHighOpt,
    PatchSizeOpt,
    EpochsOpt,
    BatchSizeOpt,
    PatchesPerEpochOpt,
    LrOpt,
    WeightDecayOpt,
    OptimizerOpt,
    ScheduleOpt,
    PatienceOpt,
    ForegroundFractionOpt,
    ClassWeightsOpt,
    DiceWeightOpt,
    EmaOpt,
    SeedOpt,
    AppearanceOpt,
    AugmentOpt,
    ElasticOpt,
    RotateOpt,
    ZoomOpt,
    DeviceOpt,
    PrecisionOpt,
    ThreadsOpt,
    WorkersOpt,
    ResumeOpt,
)
from segtool.errors import SegtoolError, first_line
from segtool.memory import parse_memory_limit
from segtool.train.options import FINETUNE_DEFAULTS
from segtool.plotting import PLOT_HINT, plotting_available

# Options that a checkpoint fixes: given together with --resume they are ignored (and we say so).
_FIXED_BY_CHECKPOINT = (
    "depth", "base_channels", "target", "norm_low", "norm_high", "patch_size", "epochs", "batch_size",
    "patches_per_epoch", "lr", "weight_decay", "optimizer", "schedule", "patience", "foreground_fraction",
    "seed", "augment", "elastic", "rotate", "zoom", "appearance", "val_fraction", "val_seed", "class_weights", "precision",
    "ema", "dice_weight", "init", "freeze_encoder", "channels", "input_transform",
)

# Options that --init takes from the parent model: given together with it they are ignored (and we say so).
_FIXED_BY_PARENT = ("depth", "base_channels", "target", "norm_low", "norm_high")


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
    data: DataOpt,
    output: OutputOpt,
    val: ValOpt = None,
    val_fraction: ValFractionOpt = 0.15,
    val_seed: ValSeedOpt = None,
    channel: Channel = None,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    json_out: JsonOutOpt = False,
    init: InitOpt = None,
    channels: ChannelsOpt = None,
    input_transform: InputTransformOpt = None,
    freeze_encoder: FreezeEncoderOpt = 0,
    target: TargetOpt = Target.three_class,
    depth: DepthOpt = 4,
    base_channels: BaseChannelsOpt = 16,
    norm_low: NormLowOpt = 1.0,
    norm_high: NormHighOpt = 99.8,
    patch_size: PatchSizeOpt = 256,
    epochs: EpochsOpt = 100,
    batch_size: BatchSizeOpt = 8,
    patches_per_epoch: PatchesPerEpochOpt = None,
    lr: LrOpt = 1e-3,
    weight_decay: WeightDecayOpt = 1e-4,
    optimizer: OptimizerOpt = Optimizer.adamw,
    schedule: ScheduleOpt = Schedule.cosine,
    patience: PatienceOpt = 20,
    foreground_fraction: ForegroundFractionOpt = 0.8,
    class_weights: ClassWeightsOpt = False,
    dice_weight: DiceWeightOpt = 1.0,
    ema: EmaOpt = 0.0,
    seed: SeedOpt = 0,
    augment: AugmentOpt = True,
    elastic: ElasticOpt = False,
    rotate: RotateOpt = False,
    zoom: ZoomOpt = 0.0,
    appearance: AppearanceOpt = False,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = "auto",
    resume: ResumeOpt = None,
    max_memory: MaxMemory = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a U-Net on images and instance masks (0 = background) and write a model file.

    Also writes, beside the model: <stem>_log.csv (one row per epoch), <stem>_curve.png and
    <stem>.ckpt/ (last.pt to --resume, best.pt the best epoch so far). Ctrl-C stops cleanly with a
    resumable checkpoint.
    """
    # The report module needs torch; imported here, not at the top, so other commands start without it.
    from segtool.train.report import output_files, write_log

    err = stderr()
    files = output_files(output)
    launched_as_segtool = bool(sys.argv) and Path(sys.argv[0]).name in ("segtool", "__main__.py")
    command = shlex.join(["segtool", *sys.argv[1:]]) if launched_as_segtool else None
    with exit_on_error(debug):
        run = _settings(ctx, err)
    _refuse_overwrite(files, resumed=resume is not None, overwrite=overwrite)
    _set_threads(threads, run)
    training = _read_data(ctx, run)
    if not quiet:
        err.print(
            f"segtool: training on {len(training.train)} images, validating on {len(training.val)}; "
            f"{run.config.target}, depth {run.config.depth}, {run.config.base_channels} base channels, "
            f"patch {run.config.patch_size}, device {run.device}, {run.options.precision}, "
            f"{run.options.workers} data workers",
            markup=False,
            highlight=False,
        )
    result, stop = _train(run, training, files, err, resume=resume, quiet=quiet, debug=debug)
    if result.history:
        with exit_on_error(debug):
            _write_curve(files["curve"], result.history, title=files["model"].name, err=err, quiet=quiet)
            write_log(files["log"], result.history)
    if result.stop_reason == "interrupted":
        code = EXIT_TERMINATED if stop.signal == signal.SIGTERM else EXIT_INTERRUPTED
        again = _resume_command(data, output, result.last_checkpoint, launched_as_segtool)
        print(
            f"segtool: interrupted: checkpoint written to {result.last_checkpoint}; continue with:\n  {again}",
            file=sys.stderr,
        )
        raise typer.Exit(code)
    _save_and_report(result, run, training, files, err, command=command, ctx=ctx)


class _Settings:
    """What a run trains with: from the options, the parent model (--init), or the checkpoint (--resume)."""

    def __init__(self, config, options, *, resume_state=None, parent=None, init_weights=None) -> None:
        self.config = config
        self.options = options
        self.resume_state: dict[str, Any] = resume_state or {}
        self.parent: dict[str, Any] | None = parent
        self.init_weights = init_weights
        self.device = None  # the resolved torch.device


def _settings(ctx: typer.Context, err) -> _Settings:
    """The network config and training options of this run, with notes about options that do not apply."""
    from segtool.train.loader import auto_workers, resume_workers
    from segtool.model.model import resolve_device
    from segtool.model.precision import resolve_precision

    p = ctx.params
    if p["resume"] is not None:
        from segtool.train.resume import read_checkpoint_settings

        with exit_on_error(p["debug"], where=str(p["resume"])):
            config, options, resume_state = read_checkpoint_settings(p["resume"])
        run = _Settings(config, options, resume_state=resume_state, parent=resume_state.get("extra", {}).get("parent"))
        options.device = p["device"].value
        _note_ignored(ctx, err, _FIXED_BY_CHECKPOINT, "resuming with the checkpoint's settings")
    else:
        run = _new_run(ctx, err)
    options = run.options
    run.device = resolve_device(options.device)
    workers = p["workers"]
    requested_workers = auto_workers(run.device) if workers == "auto" else int(workers)
    if p["resume"] is None:
        # stored resolved, so the model card says what the run used and --resume repeats it
        options.precision = resolve_precision(p["precision"].value, run.device)
        options.workers = requested_workers
    else:
        # the checkpoint's patches came from the training process (0) or from workers: resuming keeps that
        options.workers = resume_workers(options.workers, requested_workers)
        if workers != "auto" and options.workers != requested_workers and not p["quiet"]:
            err.print(
                f"segtool: note: the checkpoint's run used {'no' if options.workers == 0 else 'some'} data workers; "
                f"continuing with --workers {options.workers}",
                markup=False,
                highlight=False,
            )
    return run


def _new_run(ctx: typer.Context, err) -> _Settings:
    """Settings of a run that starts from scratch or from a parent model (--init)."""
    from segtool.train.augment import AugmentOptions
    from segtool.model.config import CHANNEL_MODES, UNetConfig
    from segtool.train.options import TrainOptions

    p = ctx.params
    init_weights = parent = None
    channels = p["channels"]
    if p["init"] is not None:
        from dataclasses import replace

        from segtool.train.finetune import child_config, load_init

        # an unusable parent is a usage error, found before any image is read (exit 2, as predict -m)
        with exit_on_error(p["debug"], where=p["init"], code=EXIT_USAGE):
            parent_model = load_init(p["init"])
        mode = channels.value if channels is not None else parent_model.config.channels
        transform = p["input_transform"]
        config = child_config(parent_model.config, channels=mode,
                              input_transform=transform.value if transform is not None else None)
        if _explicit(ctx, ["patch_size"]):
            config = replace(config, patch_size=p["patch_size"])
        init_weights = parent_model.weights_for(config)
        parent = parent_model.record
        _note_ignored(ctx, err, _FIXED_BY_PARENT, f"--init takes the network from {p['init']}")
    else:
        if p["freeze_encoder"]:
            fail("--freeze-encoder needs --init (a random encoder has nothing to keep)", code=EXIT_USAGE)
        mode = channels.value if channels is not None else "grey"
        config = UNetConfig(
            in_channels=CHANNEL_MODES[mode],
            channels=mode,
            input=p["input_transform"].value if p["input_transform"] is not None else "intensity",
            depth=p["depth"],
            base_channels=p["base_channels"],
            target=p["target"].value,
            norm_low=p["norm_low"],
            norm_high=p["norm_high"],
            patch_size=p["patch_size"],
        )
    tuned = p["init"] is not None
    geometry = {"elastic": p["elastic"], "rotate": p["rotate"], "zoom": p["zoom"]}
    if not p["augment"]:
        augment = AugmentOptions.none()
    elif p["appearance"]:
        augment = AugmentOptions.microscopes(**geometry)
    else:
        augment = AugmentOptions(**geometry)
    options = TrainOptions(
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        patches_per_epoch=p["patches_per_epoch"],
        learning_rate=FINETUNE_DEFAULTS["lr"] if tuned and not _explicit(ctx, ["lr"]) else p["lr"],
        warmup_epochs=FINETUNE_DEFAULTS["warmup_epochs"] if tuned else 1.0,
        freeze_encoder_epochs=p["freeze_encoder"],
        weight_decay=p["weight_decay"],
        optimizer=p["optimizer"].value,
        schedule=p["schedule"].value,
        patience=p["patience"],
        foreground_fraction=p["foreground_fraction"],
        class_weighting=p["class_weights"],
        augment=augment,
        seed=p["seed"],
        device=p["device"].value,
        ema_decay=p["ema"],
        dice_weight=p["dice_weight"],
    )
    return _Settings(config, options, parent=parent, init_weights=init_weights)


def _note_ignored(ctx: typer.Context, err, names: Sequence[str], why: str) -> None:
    """Say which of the options given on the command line this run ignores, and why."""
    ignored = _explicit(ctx, names)
    if ignored and not ctx.params["quiet"]:
        err.print(f"segtool: note: {why}; ignoring {', '.join(ignored)}", markup=False, highlight=False)


def _refuse_overwrite(files: dict[str, Path], *, resumed: bool, overwrite: bool) -> None:
    """Exit 1 before any work when the run would replace files without --overwrite."""
    existing = [str(files[k]) for k in ("model", "log", "curve") if files[k].exists()]
    if resumed:
        existing = [p for p in existing if p == str(files["model"])]
    if existing and not overwrite:
        fail(f"{', '.join(existing)} exist(s); use --overwrite to replace", code=1)
    last = files["checkpoints"] / "last.pt"
    if not resumed and last.exists() and not overwrite:
        fail(f"{last} exists from an earlier run; continue it with --resume {last}, or use --overwrite to start again", code=1)


def _set_threads(threads: int | None, run: _Settings) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif run.options.workers and run.device.type == "cpu":
        # PyTorch takes a thread per core by default; with the cores busy elsewhere (data workers) its threads
        # spin waiting for one another: a small step ran 30-60x slower with 2 threads than with 1 on the busy 2-core host
        torch.set_num_threads(max(1, torch.get_num_threads() - run.options.workers))


def _read_data(ctx: typer.Context, run: _Settings):
    """The training and validation arrays (:class:`segtool.train.trainset.TrainingData`); exit on bad files."""
    from segtool.train.trainset import BadPairs, check_data_arguments, load_training_data

    p = ctx.params
    options = run.options
    run.fraction = None
    run.split_seed = options.seed if p["val_seed"] is None else p["val_seed"]
    if p["val"] is None:
        run.fraction = p["val_fraction"]
        if p["resume"] is not None:
            extra = run.resume_state.get("extra", {})
            stored = extra.get("val_fraction", p["val_fraction"])
            if stored is None:
                fail("the checkpoint's run used --val; give the same --val IMAGES MASKS again", code=EXIT_USAGE)
            run.fraction = float(stored)
            run.split_seed = int(extra.get("val_seed", options.seed))
    try:
        memory_limit = parse_memory_limit(p["max_memory"])
        for specs in (p["data"], p["val"]):
            if specs:
                check_data_arguments(list(specs))
    except SegtoolError as error:
        fail(first_line(error), code=EXIT_USAGE)
    with exit_on_error(p["debug"]):
        try:
            return load_training_data(
                p["data"], p["val"], fraction=run.fraction, split_seed=run.split_seed, recursive=p["recursive"],
                channel=p["channel"], colour=run.config.reads_colour, memory_limit=memory_limit,
            )
        except BadPairs as bad:
            for where, message in bad.problems:
                print(error_line(where, message), file=sys.stderr)
            fail(f"{len(bad.problems)} bad image/mask file(s); nothing trained")


def _train(run: _Settings, training, files: dict[str, Path], err, *, resume: Path | None, quiet: bool, debug: bool):
    """Run the training loop with a progress bar and the epoch log; returns ``(result, stop_flag)``."""
    from segtool.train.interrupt import StopFlag
    from segtool.train.report import epoch_line, write_log
    from segtool.train.report import EpochReport
    from segtool.train.loop import train_model

    options = run.options
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

    stop = StopFlag(on_first=_say_stopping)
    try:
        with exit_on_error(debug), stop, progress:
            if run.resume_state:
                # the log of the epochs before the interruption comes from the checkpoint
                history.extend(EpochReport(**h) for h in run.resume_state["loop"]["history"])
            result = train_model(
                training.train,
                training.val,
                run.config,
                options=options,
                checkpoint_dir=files["checkpoints"],
                train_names=training.train_names,
                val_names=training.val_names,
                on_step=on_step,
                on_epoch=on_epoch,
                resume_from=resume,
                stop_requested=stop,
                checkpoint_extra={"val_fraction": run.fraction, "val_seed": run.split_seed, "parent": run.parent},
                init_weights=run.init_weights,
            )
    except KeyboardInterrupt:
        progress.stop()
        last = files["checkpoints"] / "last.pt"
        where = f"; the checkpoint of the last finished epoch is {last}" if last.exists() else ""
        print(f"\nsegtool: aborted{where}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    progress.stop()
    return result, stop


def _say_stopping() -> None:
    print(
        "\nsegtool: stopping after the current step and writing a checkpoint (Ctrl-C again to abort)",
        file=sys.stderr,
        flush=True,
    )


def _write_curve(path: Path, history, *, title: str, err, quiet: bool) -> None:
    """The training curve PNG, or a one-line note when matplotlib (the optional [plot] extra) is missing."""
    from segtool.train.report import plot_curve

    if plotting_available():
        plot_curve(path, history, title=title)
    elif not quiet:
        err.print(f"segtool: note: no training curve ({path.name}): {PLOT_HINT}", markup=False, highlight=False)


def _save_and_report(result, run: _Settings, training, files: dict[str, Path], err, *, command: str | None,
                     ctx: typer.Context) -> None:
    """Write the model file, then the summary on stderr and the model path (or --json) on stdout."""
    from segtool.model.modelfile import save_model
    from segtool.train.report import build_metadata

    p = ctx.params
    extra = {
        "parent": run.parent,
        "training_files": [Path(n).name for n in training.train_names],
        "validation_files": [Path(n).name for n in training.val_names],
        "validation_source": "--val" if p["val"] is not None
        else f"held out {len(training.val_names)} of {training.total} images (seed {run.split_seed})",
    }
    metadata = build_metadata(result, command=command, extra=extra)
    with exit_on_error(p["debug"]):
        save_model(files["model"], result.net, run.config, metadata=metadata, overwrite=p["overwrite"])
    best = result.best
    if not p["quiet"]:
        summary = f"segtool: {result.stop_reason.replace('_', ' ')} after {len(result.history)} epochs; best epoch {result.best_epoch}"
        if best is not None and best.val_f1 is not None:
            summary += f" (validation F1@0.5 {best.val_f1:.3f}, AP@0.5 {best.val_ap:.3f})"
        err.print(summary, markup=False, highlight=False)
    if not p["json_out"]:
        print(files["model"])
        return
    curve = files["curve"] if plotting_available() else None  # without matplotlib no curve was drawn
    print(
        json.dumps(
            {
                "model": str(files["model"]),
                "log": str(files["log"]),
                "curve": None if curve is None else str(curve),
                "checkpoints": str(files["checkpoints"]),
                "stop_reason": result.stop_reason,
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "validation": metadata["validation"],
                "training_data": result.train_data,
            }
        )
    )


def _resume_command(data: Sequence[str], output: Path, checkpoint: Path, from_argv: bool) -> str:
    """The command line that continues an interrupted run: the original one plus ``--resume``.

    ``--epochs`` and ``--patches-per-epoch`` are left out: the checkpoint holds the run's schedule, which a
    resumed run keeps, so repeating them would only suggest they could change it.
    """
    if from_argv:
        dropped = ("--resume", "--epochs", "--patches-per-epoch")
        kept = []
        skip = False
        for arg in sys.argv[1:]:
            if skip:
                skip = False
                continue
            if arg in dropped:
                skip = True
                continue
            if arg.startswith(tuple(f"{name}=" for name in dropped)):
                continue
            kept.append(arg)
        return shlex.join(["segtool", *kept, "--resume", str(checkpoint)])
    return shlex.join(["segtool", "train", *data, "-o", str(output), "--resume", str(checkpoint)])
