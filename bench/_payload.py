"""Writing a model file's raw payload from the bench scripts that edit one (thresholds, input, weights, card)."""

from __future__ import annotations

from pathlib import Path

import torch

from segtool.io import atomic_output
from segtool.model.modelfile import load_model


def save_payload(payload: dict, path: Path) -> Path:
    """Write ``payload`` (as ``torch.load`` read it) to ``path`` atomically, then reload it as a model.

    The reload refuses to leave a file behind that ``segtool`` could not load.
    """
    with atomic_output(path, overwrite=True) as temp:
        torch.save(payload, temp)
    load_model(path)
    return path
