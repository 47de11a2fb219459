"""What one input means for ``segtool evaluate``: a predicted label file scored against its ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import InputError
from segtool.memory import MemoryBudget
from segtool.metrics import MatchCounts, match_labels, pixel_scores
from segtool.pairing import LabelPair

__all__ = ["EvaluateTask", "evaluate_pair"]


def evaluate_pair(
    pair: LabelPair, thresholds: tuple[float, ...], memory: MemoryBudget | None = None
) -> tuple[MatchCounts, dict[str, Any]]:
    """Object matching counts and pixel scores of one prediction against its ground truth.

    2-D label images, or Z stacks matched by 3-D IoU.

    Raises
    ------
    InputError
        When either file cannot be read, or their shapes differ; the message
        starts with the file concerned.
    """
    from segtool.tasks.stack import read_labels_any

    try:
        pred = read_labels_any(pair.pred, memory=memory)[0]
    except InputError as err:
        raise InputError(f"{pair.pred}: {err}") from err
    try:
        gt = read_labels_any(pair.gt, memory=memory)[0]
    except InputError as err:
        raise InputError(f"{pair.gt}: {err}") from err
    if pred.shape != gt.shape:
        raise InputError(f"{pair.pred}: shape mismatch: prediction is {pred.shape}, ground truth {pair.gt} is {gt.shape}")
    return match_labels(gt, pred, thresholds=thresholds), pixel_scores(gt, pred)


@dataclass(frozen=True)
class EvaluateTask:
    """Per-pair work of ``segtool evaluate``: the inputs are the predictions of ``pairs``.

    Writes nothing (the command writes the dataset's files at the end); the
    figures are ``counts`` (a :class:`segtool.metrics.MatchCounts`, to be
    summed over the dataset) and ``pixels`` (:func:`segtool.metrics.pixel_scores`).
    Error messages name their file (the prediction or the ground truth).
    """

    pairs: dict[Path, LabelPair]  # by prediction
    thresholds: tuple[float, ...]
    memory: MemoryBudget | None = None  # the memory guard (--max-memory)

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        return {}

    def run(self, path: Path) -> dict[str, Any]:
        counts, pixels = evaluate_pair(self.pairs[path], self.thresholds, self.memory)
        return {"counts": counts, "pixels": pixels}
