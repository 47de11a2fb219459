"""The validation images a training run held out, for the post-processing studies in this folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtool.io import read_image, read_labels
from segtool.model.modelfile import LoadedModel, load_model


def load_validation(model_path: Path, data: Path) -> tuple[LoadedModel, list[str], list[np.ndarray], list[np.ndarray]]:
    """Load a model and the images and true masks of the validation files its metadata lists.

    ``data`` is the training folder with ``images/`` and ``masks/``; exits with a message when the
    model lists no validation files (a model trained with --val-fraction 0 or by another tool).
    """
    model = load_model(model_path)
    names = model.metadata.get("validation_files") or []
    if not names:
        raise SystemExit(f"{model_path}: metadata lists no validation files")
    # a colour model (--channels rgb, or --input hematoxylin) reads R, G and B, as segtool predict does
    colour = model.config.reads_colour
    images = [read_image(data / "images" / name, colour=colour).data for name in names]
    truths = [read_labels(data / "masks" / name).data for name in names]
    return model, names, images, truths
