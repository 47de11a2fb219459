"""Train a U-Net on image/label pairs held in memory.

:func:`train_model` is the whole training loop: patches sampled and augmented
on the fly, Adam/AdamW with warm-up and cosine decay, per-epoch validation on
whole held-out images (loss and instance F1 / AP at IoU 0.5), early stopping
on the validation F1 (ties broken by the validation loss), an optional moving
average of the weights (``ema_decay``; then it is what is validated and
saved), and checkpoints (``last.pt`` to resume, ``best.pt`` a usable model
file). Progress goes through callbacks; nothing is printed.

Reproducibility: with the same seed, data, options and number of CPU threads
the weights are the same, also across an interruption and ``resume_from``:
every random draw comes from seeded :class:`numpy.random.Generator` s, the
run's own (whose state is stored in the checkpoint with the optimiser state
and the step count; the learning rate is a function of the step) or, with
data worker processes, one per batch derived from the seed and the step
(:mod:`segtool.unet.loader`).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtool.errors import InputError, ModelError
from segtool.unet.config import TrainOptions, UNetConfig
from segtool.unet.dataset import PatchSampler, Sample, prepare_samples, summarize_pairs
from segtool.unet.ema import update_average
from segtool.unet.heads import activate
from segtool.unet.loader import iterate_batches, worker_failure
from segtool.unet.model import UNet, resolve_device
from segtool.unet.modelfile import (
    check_resume,
    load_checkpoint,
    read_checkpoint_settings,
    save_checkpoint,
    save_model,
)
from segtool.unet.precision import autocast
from segtool.unet.targets import class_weights, target_loss

__all__ = [
    "EpochReport",
    "StepReport",
    "TrainOptions",
    "TrainResult",
    "build_metadata",
    "learning_rate_at",
    "predict_maps",
    "read_checkpoint_settings",
    "train_model",
]

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class StepReport:
    """Progress inside an epoch: one training step or one validation image."""

    phase: str  # "train" or "val"
    epoch: int  # 1-based
    step: int  # 1-based within the phase
    steps: int
    loss: float | None  # running mean training loss of this epoch (train phase)


@dataclass(frozen=True)
class EpochReport:
    """What happened in one epoch (one row of the training log)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    val_f1: float | None
    val_ap: float | None
    val_ap_mean: float | None
    learning_rate: float
    patches: int
    seconds: float  # whole epoch: training steps and validation
    train_seconds: float  # training steps only (data loading included)
    data_seconds: float  # patch sampling, augmentation and tensor conversion
    improved: bool
    best_epoch: int

    @property
    def patches_per_second(self) -> float:
        """Training throughput (validation time excluded)."""
        return self.patches / self.train_seconds if self.train_seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of :func:`train_model`.

    Attributes
    ----------
    net : UNet
        Weights of the best epoch, in eval mode.
    config : UNetConfig
    options : TrainOptions
    history : list of EpochReport
    best_epoch : int
        1-based; 0 if no epoch finished.
    stop_reason : {"completed", "early_stopped", "interrupted"}
    last_checkpoint : Path
        Resumable checkpoint (``last.pt``).
    best_checkpoint : Path or None
        Model file of the best epoch (``best.pt``), loadable by
        :func:`segtool.unet.modelfile.load_model`.
    train_data, val_data : dict
        Counts and content hash (:func:`segtool.unet.dataset.summarize_pairs`).
    class_weights : list of float or None
    device : str
    """

    net: UNet
    config: UNetConfig
    options: TrainOptions
    history: list[EpochReport]
    best_epoch: int
    stop_reason: str
    last_checkpoint: Path
    best_checkpoint: Path | None
    train_data: dict[str, Any]
    val_data: dict[str, Any]
    class_weights: list[float] | None
    device: str

    @property
    def best(self) -> EpochReport | None:
        """The report of the best epoch."""
        for report in self.history:
            if report.epoch == self.best_epoch:
                return report
        return None


def learning_rate_at(step: int, *, total_steps: int, warmup_steps: int, options: TrainOptions) -> float:
    """Learning rate for optimiser step ``step`` (0-based).

    Linear warm-up from 10 % to 100 % of ``options.learning_rate`` over
    ``warmup_steps``, then constant or cosine decay to
    ``options.min_lr_fraction`` of it at ``total_steps``.

    Examples
    --------
    >>> opts = TrainOptions(learning_rate=1.0, min_lr_fraction=0.0)
    >>> [round(learning_rate_at(s, total_steps=10, warmup_steps=0, options=opts), 3) for s in (0, 5, 10)]
    [1.0, 0.5, 0.0]
    """
    peak = options.learning_rate
    if step < warmup_steps:
        return peak * (0.1 + 0.9 * step / warmup_steps)
    if options.schedule == "constant":
        return peak
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    low = peak * options.min_lr_fraction
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    height, width = image.shape[-2:]
    pads = [(0, 0)] * (image.ndim - 2) + [(0, -height % multiple), (0, -width % multiple)]
    return np.pad(image, pads, mode="symmetric") if any(p[1] for p in pads) else image


def predict_maps(net: UNet, image: np.ndarray, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for one whole normalised image, padded to a multiple of ``2**depth``.

    Parameters
    ----------
    net : UNet
        Used as is (call ``net.eval()`` first for inference).
    image : (C, H, W) ndarray of float32

    Returns
    -------
    logits : (out_channels, H, W) Tensor
        On ``device``, cropped back to the image size.
    """
    padded = _pad_to_multiple(image, net.config.size_multiple)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None].to(device)
    return net(x)[0, :, : image.shape[-2], : image.shape[-1]]


def _postprocess_kwargs(config: UNetConfig) -> dict[str, Any]:
    from segtool.unet.instances import maps_to_labels

    accepted = set(inspect.signature(maps_to_labels).parameters) - {"maps", "target"}
    return {k: v for k, v in config.postprocess.items() if k in accepted}


class _Interrupted(Exception):
    """Raised inside the loop when ``stop_requested()`` turns true."""


def _validate(
    net: UNet,
    samples: Sequence[Sample],
    config: UNetConfig,
    *,
    weights: torch.Tensor | None,
    dice_weight: float,
    device: torch.device,
    epoch: int,
    on_step: Callable[[StepReport], None] | None,
    stop_requested: Callable[[], bool] | None,
) -> tuple[float, float, float, float]:
    """Validation loss (pixel-weighted mean) and F1, AP at IoU 0.5, mean AP 0.5:0.95."""
    from segtool.metrics import match_labels
    from segtool.unet.instances import maps_to_labels

    kwargs = _postprocess_kwargs(config)
    net.eval()
    loss_sum = 0.0
    pixels = 0
    counts = None
    with torch.no_grad():
        for index, sample in enumerate(samples, start=1):
            if stop_requested is not None and stop_requested():
                raise _Interrupted
            logits = predict_maps(net, sample.image, device=device)
            target = torch.from_numpy(sample.target)[None].to(device)
            n = sample.labels.size
            loss_sum += float(target_loss(logits[None], target, config.target, weights=weights, dice_weight=dice_weight)) * n
            pixels += n
            maps = activate(logits, config.target).float().cpu().numpy()
            predicted = maps_to_labels(maps, target=config.target, **kwargs)
            matched = match_labels(sample.labels, predicted)
            counts = matched if counts is None else counts + matched
            if on_step is not None:
                on_step(StepReport("val", epoch, index, len(samples), None))
    return (
        loss_sum / max(pixels, 1),
        float(counts.f1[0]),
        float(counts.ap[0]),
        float(np.mean(counts.ap)),
    )


def _numpy_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def _restore_numpy_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = json.loads(text)


@dataclass
class _Loop:
    """Loop counters that a checkpoint must carry (JSON-safe)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps in the current epoch
    global_step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    data_seconds: float = 0.0
    best_score: list[float] | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _steps_per_epoch(samples: Sequence[Sample], config: UNetConfig, options: TrainOptions) -> int:
    if options.patches_per_epoch is not None:
        patches = options.patches_per_epoch
    else:
        pixels = sum(s.labels.size for s in samples)
        patches = math.ceil(pixels / config.patch_size**2)
    return max(1, math.ceil(patches / options.batch_size))


def _make_optimizer(net: UNet, options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    return torch.optim.Adam(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)


def build_metadata(result: TrainResult, *, command: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training summary stored in a model file's metadata.

    Parameters
    ----------
    result : TrainResult
    command : str, optional
        The command line that trained it.
    extra : dict, optional
        Merged in last (e.g. file lists from the CLI).

    Returns
    -------
    metadata : dict, JSON-safe
    """
    from segtool import __version__

    best = result.best
    metadata: dict[str, Any] = {
        "segtool_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "epochs_run": len(result.history),
        "epochs_planned": result.options.epochs,
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        # epochs' wall time (steps + validation), summed over resumed runs too: the cost of reproducing the model
        "training_seconds": round(sum(report.seconds for report in result.history), 3),
        "validation": None
        if best is None or best.val_f1 is None
        else {
            "images": result.val_data.get("images"),
            "loss": best.val_loss,
            "f1_iou50": best.val_f1,
            "ap_iou50": best.val_ap,
            "ap_iou50_95": best.val_ap_mean,
        },
        "train_loss": None if best is None else best.train_loss,
        # median equivalent diameter (px) of the training objects: lets prediction rescale other images
        "median_diameter": result.train_data.get("median_diameter"),
        "training_data": result.train_data,
        "validation_data": result.val_data,
        "options": result.options.to_dict(),
        "class_weights": result.class_weights,
        "device": result.device,
    }
    metadata.update(extra or {})
    return metadata


def train_model(
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    config: UNetConfig,
    *,
    options: TrainOptions,
    checkpoint_dir: str | Path,
    train_names: Sequence[str] | None = None,
    val_names: Sequence[str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    resume_from: str | Path | None = None,
    stop_requested: Callable[[], bool] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a U-Net and return the best network.

    Parameters
    ----------
    train_pairs, val_pairs : sequence of (image, labels)
        Raw images ((H, W), or (C, H, W) for several channels) and integer
        instance labels (0 = background). ``val_pairs`` may be empty (then
        the best epoch is the one with the lowest training loss).
    config : UNetConfig
        Network, normalisation and target. With ``resume_from``, must equal
        the checkpoint's.
    options : TrainOptions
        With ``resume_from``, must equal the checkpoint's except ``device``.
    checkpoint_dir : path
        Folder for ``last.pt`` (resumable checkpoint, written after every
        epoch and on interruption) and ``best.pt`` (model file of the best
        epoch). Created if missing.
    train_names, val_names : sequence of str, optional
        Names for error messages.
    on_step : callable, optional
        Called with a :class:`StepReport` after every training step and
        validation image.
    on_epoch : callable, optional
        Called with an :class:`EpochReport` after every epoch, once its
        checkpoint is written.
    resume_from : path, optional
        A ``last.pt`` to continue from: same weights, optimiser state,
        learning-rate step and random state.
    stop_requested : callable, optional
        Polled before every step; when it returns True a resumable checkpoint
        is written and training returns with ``stop_reason="interrupted"``.
    checkpoint_extra : dict, optional
        JSON-safe values stored in ``last.pt`` for the caller (e.g. how the
        validation images were chosen); read back with
        :func:`read_checkpoint_settings` as ``state["extra"]``.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        Bad images or labels, no training images, bad options.
    ModelError
        ``resume_from`` is not a checkpoint, or was made with another
        config, options or training data.
    OutputError
        A checkpoint cannot be written.
    """
    device = resolve_device(options.device)
    if not train_pairs:
        raise InputError("no training images")
    train_samples = prepare_samples(train_pairs, config, names=train_names)
    val_samples = prepare_samples(val_pairs, config, names=val_names)
    train_data = summarize_pairs(train_pairs)
    val_data = summarize_pairs(val_pairs)

    weights_list = None
    weights = None
    if config.target in ("three_class", "three_class_distance") and options.class_weighting:
        weights_list = [float(w) for w in class_weights([s.target[0] for s in train_samples])]
        weights = torch.tensor(weights_list, dtype=torch.float32, device=device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        net = UNet(config)
    net.to(device)
    # bfloat16 convolutions are fastest on channels-last tensors (oneDNN's native layout); float32
    # keeps the plain layout so that runs made before the precision option reproduce bit for bit.
    memory_format = torch.channels_last if options.precision == "bf16" else torch.contiguous_format
    net.to(memory_format=memory_format)
    optimizer = _make_optimizer(net, options)
    # with --ema, validation, best epoch and saved models use the weight average, not the last step's weights
    average = copy.deepcopy(net) if options.ema_decay > 0 else None
    scored = average if average is not None else net
    rng = np.random.default_rng(options.seed)
    sampler = PatchSampler(
        train_samples,
        patch_size=config.patch_size,
        rng=rng,
        foreground_fraction=options.foreground_fraction,
        augment=options.augment,
    )
    steps_per_epoch = _steps_per_epoch(train_samples, config, options)
    total_steps = steps_per_epoch * options.epochs
    warmup_steps = min(round(options.warmup_epochs * steps_per_epoch), total_steps // 2)

    checkpoint_dir = Path(checkpoint_dir)
    last_path = checkpoint_dir / "last.pt"
    best_path = checkpoint_dir / "best.pt"
    loop = _Loop()
    best_state: dict[str, torch.Tensor] | None = None

    if resume_from is not None:
        payload = load_checkpoint(resume_from)
        check_resume(payload, config, options, train_data, val_data)
        state = json.loads(payload["state"])
        loop = _Loop(**state["loop"])
        try:
            net.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            if average is not None:
                average.load_state_dict(payload["average_model"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ModelError(f"checkpoint weights do not fit: {str(err).splitlines()[0][:200]}") from None
        _restore_numpy_state(rng, state["numpy_rng"])
        best_state = payload.get("best_model") or None

    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def write_last() -> None:
        best = best_state if best_state is not None else {}
        save_checkpoint(
            last_path,
            {
                "config": json.dumps(config.to_dict()),
                "options": json.dumps(options.to_dict()),
                "state": json.dumps(
                    {
                        "loop": asdict(loop),
                        "numpy_rng": _numpy_state(rng),
                        "train_data": train_data,
                        "val_data": val_data,
                        "steps_per_epoch": steps_per_epoch,
                        "extra": checkpoint_extra or {},
                    }
                ),
                "model": _cpu_weights(net),
                "best_model": best,
                **({"average_model": _cpu_weights(average)} if average is not None else {}),
                "optimizer": _cpu_state(optimizer.state_dict()),
                "torch_rng": torch.get_rng_state(),
            },
        )

    def result(stop_reason: str, result_net: UNet) -> TrainResult:
        return TrainResult(
            net=result_net,
            config=config,
            options=options,
            history=[EpochReport(**h) for h in loop.history],
            best_epoch=loop.best_epoch,
            stop_reason=stop_reason,
            last_checkpoint=last_path,
            best_checkpoint=best_path if best_path.exists() and loop.best_epoch else None,
            train_data=train_data,
            val_data=val_data,
            class_weights=weights_list,
            device=str(device),
        )

    def finish(stop_reason: str) -> TrainResult:
        if best_state is not None:
            net.load_state_dict(best_state)
        return result(stop_reason, net.eval())

    stop_reason = "completed"
    batches = iterate_batches(
        sampler,
        batch_size=options.batch_size,
        seed=options.seed,
        start=loop.global_step,
        stop=total_steps,
        workers=options.workers,
        pin_memory=device.type == "cuda",
    )
    try:
        while loop.epoch < options.epochs:
            epoch = loop.epoch + 1
            try:
                net.train()
                while loop.step < steps_per_epoch:
                    if stop_requested is not None and stop_requested():
                        raise _Interrupted
                    started = time.perf_counter()
                    x, y = next(batches)
                    # from pinned memory on CUDA: the copy overlaps the CPU work that follows
                    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    y = y.to(device, non_blocking=True)
                    loaded = time.perf_counter()
                    lr = learning_rate_at(loop.global_step, total_steps=total_steps, warmup_steps=warmup_steps, options=options)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with autocast(options.precision, device):
                        logits = net(x)
                    loss = target_loss(logits.float(), y, config.target, weights=weights, dice_weight=options.dice_weight)
                    if not torch.isfinite(loss):
                        raise InputError(
                            f"training diverged at epoch {epoch} (loss {float(loss)}); lower the learning rate"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if average is not None:
                        update_average(average, net, decay=options.ema_decay, step=loop.global_step + 1)
                    loop.loss_sum += float(loss.detach())
                    loop.step += 1
                    loop.global_step += 1
                    loop.seconds += time.perf_counter() - started
                    loop.data_seconds += loaded - started
                    if on_step is not None:
                        on_step(StepReport("train", epoch, loop.step, steps_per_epoch, loop.loss_sum / loop.step))
                started = time.perf_counter()
                if val_samples:
                    val_loss, val_f1, val_ap, val_ap_mean = _validate(
                        scored,
                        val_samples,
                        config,
                        weights=weights,
                        dice_weight=options.dice_weight,
                        device=device,
                        epoch=epoch,
                        on_step=on_step,
                        stop_requested=stop_requested,
                    )
                else:
                    val_loss = val_f1 = val_ap = val_ap_mean = None
                val_seconds = time.perf_counter() - started
            except _Interrupted:
                write_last()
                return finish("interrupted")

            train_loss = loop.loss_sum / max(loop.step, 1)
            # best = highest validation F1, ties (e.g. F1 still 0 early on) broken by the lower loss
            score = [val_f1, -val_loss] if val_f1 is not None else [-train_loss, 0.0]
            improved = loop.best_score is None or tuple(score) > tuple(loop.best_score)
            if improved:
                loop.best_score = score
                loop.best_epoch = epoch
                loop.bad_epochs = 0
                best_state = _cpu_weights(scored)
            else:
                loop.bad_epochs += 1
            report = EpochReport(
                epoch=epoch,
                epochs=options.epochs,
                train_loss=train_loss,
                val_loss=val_loss,
                val_f1=val_f1,
                val_ap=val_ap,
                val_ap_mean=val_ap_mean,
                learning_rate=learning_rate_at(
                    loop.global_step - 1, total_steps=total_steps, warmup_steps=warmup_steps, options=options
                ),
                patches=loop.step * options.batch_size,
                seconds=loop.seconds + val_seconds,
                train_seconds=loop.seconds,
                data_seconds=loop.data_seconds,
                improved=improved,
                best_epoch=loop.best_epoch,
            )
            loop.history.append(report.to_dict())
            loop.epoch = epoch
            loop.step = 0
            loop.loss_sum = 0.0
            loop.seconds = loop.data_seconds = 0.0
            if improved:
                best_net = copy.deepcopy(scored).cpu().eval()
                save_model(best_path, best_net, config, metadata=build_metadata(result("in_progress", best_net)), overwrite=True)
            write_last()
            if on_epoch is not None:
                on_epoch(report)
            if options.patience and loop.bad_epochs >= options.patience:
                stop_reason = "early_stopped"
                break
        return finish(stop_reason)
    except RuntimeError as err:
        failure = worker_failure(err)
        if failure is None:
            raise
        raise failure from None
    finally:
        batches.close()  # ends the worker processes, also after an error, an interruption or an early stop


def _cpu_weights(net: UNet) -> dict[str, torch.Tensor]:
    """A CPU copy of the network's weights in the plain memory layout (also after channels-last training)."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in net.state_dict().items()}


def _cpu_state(state: Any) -> Any:
    """Copy an optimiser state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu_state(v) for v in state]
    return state
