"""The training report: per-step and per-epoch reports, the run's outcome, and what is written about it.

:func:`segtool.train.loop.train_model` reports progress as :class:`StepReport`
and :class:`EpochReport` objects and returns a :class:`TrainResult`; this
module turns them into the files written beside a model (the epoch log CSV,
the training-curve PNG) and the summary stored in the model file
(:func:`build_metadata`). The curve needs matplotlib (``pip install
'segtool[plot]'``); :func:`segtool.plotting.plotting_available` says whether it is there.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtool.io import atomic_output
from segtool.model.config import UNetConfig
from segtool.model.model import UNet
from segtool.train.options import TrainOptions

__all__ = [
    "LOG_COLUMNS",
    "EpochReport",
    "StepReport",
    "TrainResult",
    "build_metadata",
    "epoch_line",
    "output_files",
    "plot_curve",
    "write_log",
]

#: Columns of the epoch log CSV (``<stem>_log.csv``), one row per epoch.
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
    """The outcome of :func:`segtool.train.loop.train_model`.

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
        :func:`segtool.model.modelfile.load_model`.
    train_data, val_data : dict
        Counts and content hash (:func:`segtool.train.dataset.summarize_pairs`).
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


def write_log(path: Path, history) -> Path:
    """Write the epoch log CSV atomically (rewritten whole after every epoch)."""
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
