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
(:mod:`segtool.train.loader`).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtool.errors import InputError, ModelError
from segtool.model.config import UNetConfig
from segtool.train.dataset import PatchSampler, Sample, prepare_samples, summarize_pairs
from segtool.train.ema import update_average
from segtool.model.heads import activate
from segtool.train.loader import iterate_batches
from segtool.model.model import UNet, resolve_device
from segtool.model.modelfile import load_checkpoint, save_checkpoint, save_model
from segtool.model.precision import autocast
from segtool.train.options import TrainOptions
from segtool.train.report import EpochReport, StepReport, TrainResult, build_metadata
from segtool.train.resume import check_resume
from segtool.train.targets import class_weights, target_loss

__all__ = [
    "learning_rate_at",
    "whole_image_logits",
    "train_model",
]

Pair = tuple[np.ndarray, np.ndarray]


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


def whole_image_logits(net: UNet, image: np.ndarray, *, device: torch.device | str = "cpu") -> torch.Tensor:
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
    from segtool.infer.instances import maps_to_labels

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
    from segtool.infer.instances import maps_to_labels

    kwargs = _postprocess_kwargs(config)
    net.eval()
    loss_sum = 0.0
    pixels = 0
    counts = None
    with torch.no_grad():
        for index, sample in enumerate(samples, start=1):
            if stop_requested is not None and stop_requested():
                raise _Interrupted
            logits = whole_image_logits(net, sample.image, device=device)
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
    init_weights: dict[str, torch.Tensor] | None = None,
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
        :func:`segtool.train.resume.read_checkpoint_settings` as ``state["extra"]``.
    init_weights : dict of Tensor, optional
        Weights to start from instead of a random initialisation (a parent
        model's, see :mod:`segtool.train.finetune`); they must fit
        ``config``. Ignored with ``resume_from``, whose weights continue.

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
    run = _Training(train_pairs, val_pairs, config, options, checkpoint_dir, device=device,
                    names=(train_names, val_names), init_weights=init_weights, resume_from=resume_from,
                    checkpoint_extra=checkpoint_extra)
    stop_reason = "completed"
    batches = iterate_batches(
        run.sampler,
        batch_size=options.batch_size,
        seed=options.seed,
        start=run.loop.global_step,
        stop=run.total_steps,
        workers=options.workers,
        pin_memory=run.device.type == "cuda",
    )
    try:
        while run.loop.epoch < options.epochs:
            epoch = run.loop.epoch + 1
            try:
                run.train_epoch(epoch, batches, on_step=on_step, stop_requested=stop_requested)
                validation = run.validate(epoch, on_step=on_step, stop_requested=stop_requested)
            except _Interrupted:
                run.write_last()
                return run.finish("interrupted")
            report = run.end_epoch(epoch, *validation)
            if on_epoch is not None:
                on_epoch(report)
            if options.patience and run.loop.bad_epochs >= options.patience:
                stop_reason = "early_stopped"
                break
        return run.finish(stop_reason)
    finally:
        batches.close()  # ends the worker processes, also after an error, an interruption or an early stop


class _Training:
    """One run of :func:`train_model`: the network, its optimiser and weight average, the patch sampler,
    the loop counters, and the checkpoints they are saved to (set up, or restored from ``resume_from``)."""

    def __init__(self, train_pairs, val_pairs, config: UNetConfig, options: TrainOptions, checkpoint_dir, *,
                 device: torch.device, names, init_weights, resume_from, checkpoint_extra) -> None:
        self.config, self.options, self.checkpoint_extra = config, options, checkpoint_extra
        self.device = device
        self.train_samples = prepare_samples(train_pairs, config, names=names[0])
        self.val_samples = prepare_samples(val_pairs, config, names=names[1])
        self.train_data = summarize_pairs(train_pairs)
        self.val_data = summarize_pairs(val_pairs)

        self.weights_list = None
        self.weights = None
        if config.target in ("three_class", "three_class_distance") and options.class_weighting:
            self.weights_list = [float(w) for w in class_weights([s.target[0] for s in self.train_samples])]
            self.weights = torch.tensor(self.weights_list, dtype=torch.float32, device=device)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            net = UNet(config)
        if init_weights is not None and resume_from is None:
            try:
                net.load_state_dict(init_weights, strict=True)
            except (RuntimeError, KeyError) as err:
                raise ModelError(f"initial weights do not fit the network: {str(err).splitlines()[0][:200]}") from None
        net.to(device)
        # bfloat16 convolutions are fastest on channels-last tensors (oneDNN's native layout); float32
        # keeps the plain layout so that runs made before the precision option reproduce bit for bit.
        self.memory_format = torch.channels_last if options.precision == "bf16" else torch.contiguous_format
        net.to(memory_format=self.memory_format)
        self.net = net
        self.optimizer = _make_optimizer(net, options)
        # with --ema, validation, best epoch and saved models use the weight average, not the last step's weights
        self.average = copy.deepcopy(net) if options.ema_decay > 0 else None
        self.scored = self.average if self.average is not None else net
        self.rng = np.random.default_rng(options.seed)
        self.sampler = PatchSampler(
            self.train_samples,
            patch_size=config.patch_size,
            rng=self.rng,
            foreground_fraction=options.foreground_fraction,
            augment=options.augment,
            target=config.target,
        )
        self.steps_per_epoch = _steps_per_epoch(self.train_samples, config, options)
        self.total_steps = self.steps_per_epoch * options.epochs
        self.warmup_steps = min(round(options.warmup_epochs * self.steps_per_epoch), self.total_steps // 2)

        checkpoint_dir = Path(checkpoint_dir)
        self.last_path = checkpoint_dir / "last.pt"
        self.best_path = checkpoint_dir / "best.pt"
        self.loop = _Loop()
        self.best_state: dict[str, torch.Tensor] | None = None
        if resume_from is not None:
            self._restore(resume_from)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def _restore(self, resume_from) -> None:
        """Continue from a ``last.pt``: weights, optimiser, average, loop counters and random state."""
        payload = load_checkpoint(resume_from)
        check_resume(payload, self.config, self.options, self.train_data, self.val_data)
        state = json.loads(payload["state"])
        self.loop = _Loop(**state["loop"])
        try:
            self.net.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.average is not None:
                self.average.load_state_dict(payload["average_model"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ModelError(f"checkpoint weights do not fit: {str(err).splitlines()[0][:200]}") from None
        _restore_numpy_state(self.rng, state["numpy_rng"])
        self.best_state = payload.get("best_model") or None

    def learning_rate(self, step: int) -> float:
        return learning_rate_at(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps, options=self.options)

    def train_epoch(self, epoch: int, batches, *, on_step, stop_requested) -> None:
        """The rest of epoch ``epoch``'s training steps (all of them, unless resumed mid-epoch)."""
        net, loop, options, device = self.net, self.loop, self.options, self.device
        net.train()
        while loop.step < self.steps_per_epoch:
            if stop_requested is not None and stop_requested():
                raise _Interrupted
            started = time.perf_counter()
            x, y = next(batches)
            # from pinned memory on CUDA: the copy overlaps the CPU work that follows
            x = x.to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(device, non_blocking=True)
            loaded = time.perf_counter()
            lr = self.learning_rate(loop.global_step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with autocast(options.precision, device):
                logits = net(x)
            loss = target_loss(logits.float(), y, self.config.target, weights=self.weights, dice_weight=options.dice_weight)
            if not torch.isfinite(loss):
                raise InputError(f"training diverged at epoch {epoch} (loss {float(loss)}); lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if loop.epoch < options.freeze_encoder_epochs:
                # no gradient: AdamW leaves the parameter alone (no step, no weight decay)
                for parameter in net.encoders.parameters():
                    parameter.grad = None
            self.optimizer.step()
            if self.average is not None:
                update_average(self.average, net, decay=options.ema_decay, step=loop.global_step + 1)
            loop.loss_sum += float(loss.detach())
            loop.step += 1
            loop.global_step += 1
            loop.seconds += time.perf_counter() - started
            loop.data_seconds += loaded - started
            if on_step is not None:
                on_step(StepReport("train", epoch, loop.step, self.steps_per_epoch, loop.loss_sum / loop.step))

    def validate(self, epoch: int, *, on_step, stop_requested) -> tuple:
        """``(val_loss, val_f1, val_ap, val_ap_mean, seconds)``; the scores are None without validation images."""
        started = time.perf_counter()
        if self.val_samples:
            scores = _validate(
                self.scored,
                self.val_samples,
                self.config,
                weights=self.weights,
                dice_weight=self.options.dice_weight,
                device=self.device,
                epoch=epoch,
                on_step=on_step,
                stop_requested=stop_requested,
            )
        else:
            scores = (None, None, None, None)
        return (*scores, time.perf_counter() - started)

    def end_epoch(self, epoch: int, val_loss, val_f1, val_ap, val_ap_mean, val_seconds: float) -> EpochReport:
        """Score the epoch, keep the best weights, reset the counters and write the checkpoints."""
        loop, options = self.loop, self.options
        train_loss = loop.loss_sum / max(loop.step, 1)
        # best = highest validation F1, ties (e.g. F1 still 0 early on) broken by the lower loss
        score = [val_f1, -val_loss] if val_f1 is not None else [-train_loss, 0.0]
        improved = loop.best_score is None or tuple(score) > tuple(loop.best_score)
        if improved:
            loop.best_score = score
            loop.best_epoch = epoch
            loop.bad_epochs = 0
            self.best_state = _cpu_weights(self.scored)
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
            learning_rate=self.learning_rate(loop.global_step - 1),
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
            best_net = copy.deepcopy(self.scored).cpu().eval()
            save_model(self.best_path, best_net, self.config, metadata=build_metadata(self.result("in_progress", best_net)),
                       overwrite=True)
        self.write_last()
        return report

    def write_last(self) -> None:
        """The resumable checkpoint ``last.pt``."""
        best = self.best_state if self.best_state is not None else {}
        average = self.average
        save_checkpoint(
            self.last_path,
            {
                "config": json.dumps(self.config.to_dict()),
                "options": json.dumps(self.options.to_dict()),
                "state": json.dumps(
                    {
                        "loop": asdict(self.loop),
                        "numpy_rng": _numpy_state(self.rng),
                        "train_data": self.train_data,
                        "val_data": self.val_data,
                        "steps_per_epoch": self.steps_per_epoch,
                        "extra": self.checkpoint_extra or {},
                    }
                ),
                "model": _cpu_weights(self.net),
                "best_model": best,
                **({"average_model": _cpu_weights(average)} if average is not None else {}),
                "optimizer": _cpu_state(self.optimizer.state_dict()),
                "torch_rng": torch.get_rng_state(),
            },
        )

    def result(self, stop_reason: str, result_net: UNet) -> TrainResult:
        return TrainResult(
            net=result_net,
            config=self.config,
            options=self.options,
            history=[EpochReport(**h) for h in self.loop.history],
            best_epoch=self.loop.best_epoch,
            stop_reason=stop_reason,
            last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.best_path.exists() and self.loop.best_epoch else None,
            train_data=self.train_data,
            val_data=self.val_data,
            class_weights=self.weights_list,
            device=str(self.device),
        )

    def finish(self, stop_reason: str) -> TrainResult:
        """The result, with the best epoch's weights in the network."""
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        return self.result(stop_reason, self.net.eval())


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
