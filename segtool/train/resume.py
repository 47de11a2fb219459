"""Resuming a training run: what a checkpoint says, and whether it may continue.

A training checkpoint (``last.pt``, written and read by
:mod:`segtool.model.modelfile`) stores the network's config, the
:class:`~segtool.train.options.TrainOptions` and the loop's state as JSON;
these functions read them back and refuse a resume whose config, options or
data differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segtool.errors import ModelError
from segtool.model.config import UNetConfig
from segtool.model.modelfile import load_checkpoint
from segtool.train.options import TrainOptions

__all__ = ["check_resume", "read_checkpoint_settings"]


def check_resume(
    payload: dict[str, Any],
    config: UNetConfig,
    options: TrainOptions,
    train_data: dict[str, Any],
    val_data: dict[str, Any],
) -> None:
    """Refuse to resume a checkpoint made with another config, options or data.

    ``device`` may differ, and ``workers`` as long as both are 0 or both
    >= 1. ``train_data`` and ``val_data`` are the summaries of
    :func:`segtool.train.dataset.summarize_pairs`, compared by hash.

    Raises
    ------
    ModelError
        Naming what differs.
    """
    for key in ("config", "options", "state", "model", "optimizer"):
        if key not in payload:
            raise ModelError(f"checkpoint is damaged: '{key}' is missing")
    try:
        saved_config = UNetConfig.from_dict(json.loads(payload["config"]))
        saved_options = TrainOptions.from_dict(json.loads(payload["options"]))
        state = json.loads(payload["state"])
    except (ValueError, TypeError) as err:
        raise ModelError(f"checkpoint is damaged: {err}") from None
    if saved_config != config:
        raise ModelError("checkpoint was made with a different network config; resume with the same options")
    mine = options.to_dict()
    theirs = saved_options.to_dict()
    mine.pop("device")
    theirs.pop("device")
    # any number of data workers >= 1 draws the same patches; only 0 versus some changes them
    mine["workers"] = min(mine["workers"], 1)
    theirs["workers"] = min(theirs["workers"], 1)
    changed = sorted(k for k in mine if mine[k] != theirs.get(k))
    if changed:
        raise ModelError(f"checkpoint was made with different training options: {', '.join(changed)}")
    if state.get("train_data", {}).get("sha256") != train_data["sha256"]:
        raise ModelError("checkpoint was made with different training images or masks")
    if state.get("val_data", {}).get("sha256") != val_data["sha256"]:
        raise ModelError("checkpoint was made with different validation images or masks")


def read_checkpoint_settings(path: str | Path) -> tuple[UNetConfig, TrainOptions, dict[str, Any]]:
    """Config, options and loop state stored in a ``last.pt``, to resume with.

    Raises
    ------
    ModelError
        As :func:`segtool.model.modelfile.load_checkpoint`, or if damaged.
    """
    payload = load_checkpoint(path)
    try:
        config = UNetConfig.from_dict(json.loads(payload["config"]))
        options = TrainOptions.from_dict(json.loads(payload["options"]))
        state = json.loads(payload["state"])
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(f"checkpoint is damaged: {err}") from None
    return config, options, state
