"""Score models on their held-out validation images, untouched and as other microscopes would record them.

For the choice between a shipped model and a candidate trained with
``segtool train --appearance --zoom`` (MODELS.md, ``nuclei``): each model's
validation images (listed in its metadata; both must list the same ones) are
changed with :mod:`segtool.appearance` and resized, predicted with the
model's own settings, and scored against the true masks (AP at IoU 0.5 and
0.7, counts summed over the images). Test images are never touched.

Conditions (every random draw seeded by the condition and the image's index):

- ``untouched``
- ``gamma0.5``, ``gamma2``: :func:`~segtool.appearance.adjust_gamma`
- ``blur2``: Gaussian blur, sigma 2 px
- ``poisson20``: shot noise at 20 photons per nucleus pixel (the true mask is the foreground)
- ``offset16``: a 16-bit camera, offset 1000 counts, the image's range spanning 1000 counts, a
  linear background ramp of 500 counts across the field
- ``blobs3``: three saturated blobs of 1-2 times the image's median nucleus diameter, at 10 times
  the nuclei's contrast (not in the true masks: debris or dead cells nobody annotated)
- ``jpeg60``: JPEG at quality 60
- ``scale0.5``, ``scale2``: image resized by 0.5 (anti-aliased) or 2 (linear), masks by nearest
  neighbour, predicted with ``--scale 2`` or ``--scale 0.5`` (back to the training size)

A model with an input transform (``nuclei-he``: ``hematoxylin``) is scored on the transformed channel: the
conditions change that grey channel, and the model runs on it as on an intensity image (the same network input
as ``segtool predict`` gives it, untouched). Both models of a comparison are scored the same way.

Usage::

    python bench/validation_conditions.py segtool/models/nuclei.pt runs/candidate.pt \\
        --data ../shared/data/dsb2018_fluo/train --json runs/conditions.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from skimage.transform import rescale

from segtool import appearance as look
from segtool.intake import apply_input_transform
from segtool.metrics import match_labels
from segtool.pipeline.options import TileOptions
from segtool.infer.predict import predict_image

from _validation import load_validation  # bench/ helpers, beside this script

APPEARANCE = ("gamma0.5", "gamma2", "blur2", "poisson20", "offset16", "blobs3", "jpeg60")
SCALES = {"scale0.5": 0.5, "scale2": 2.0}
CONDITIONS = ("untouched", *APPEARANCE, *SCALES)


def median_diameter(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4.0 * areas / np.pi))) if areas.size else 20.0


def changed(condition: str, image: np.ndarray, truth: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(image, true labels, --scale for predict) under ``condition``; the image is grey (H, W)."""
    rng = np.random.default_rng([CONDITIONS.index(condition), index])
    if condition == "untouched":
        return image, truth, 1.0
    if condition in SCALES:
        factor = SCALES[condition]
        resized = rescale(image.astype(np.float32), factor, order=1, anti_aliasing=factor < 1, preserve_range=True)
        labels = rescale(truth, factor, order=0, preserve_range=True, anti_aliasing=False).astype(truth.dtype)
        return resized.astype(np.float32), labels, 1.0 / factor
    if condition.startswith("gamma"):
        return look.adjust_gamma(image, float(condition[5:])), truth, 1.0
    if condition == "blur2":
        return look.gaussian_blur(image, 2.0), truth, 1.0
    if condition == "poisson20":
        return look.shot_noise(image, rng, photons=20, foreground=truth > 0), truth, 1.0
    if condition == "offset16":
        return look.offset_gradient(image, rng, offset=1000, signal=1000, gradient=0.5), truth, 1.0
    if condition == "blobs3":
        blobs = look.saturated_blobs(image, rng, count=3, diameter=median_diameter(truth), foreground=truth > 0)
        return blobs, truth, 1.0
    if condition == "jpeg60":
        return look.jpeg_artifacts(image, quality=60), truth, 1.0
    raise ValueError(condition)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="the training folder (images/, masks/) the models held out from")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated subset of: " + ",".join(CONDITIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    conditions = args.conditions.split(",")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise SystemExit(f"unknown conditions: {', '.join(unknown)}")
    results: dict[str, dict] = {}
    first_names = None
    for path in args.models:
        model, names, images, truths = load_validation(path, args.data)
        if model.config.in_channels != 1:
            raise SystemExit(f"{path}: a grey (one-channel) model is needed")
        if model.config.input != "intensity":  # score on the channel the network reads (see the module docstring)
            images = [apply_input_transform(image, model.config.input) for image in images]
            model = replace(model, config=replace(model.config, input="intensity"))
        if first_names is None:
            first_names = names
        elif sorted(names) != sorted(first_names):
            raise SystemExit(f"{path}: its validation images differ from those of {args.models[0]}")
        scores = {}
        for condition in conditions:
            start = time.perf_counter()
            counts = None
            for index, (image, truth) in enumerate(zip(images, truths)):
                grey = image if image.ndim == 2 else image.mean(axis=-1)
                data, labels, scale = changed(condition, grey.astype(np.float32), truth, index)
                predicted = predict_image(data, model, tiling=TileOptions(scale=scale)).labels
                match = match_labels(labels, predicted, thresholds=(0.5, 0.7))
                counts = match if counts is None else counts + match
            scores[condition] = {"ap_iou50": round(float(counts.ap[0]), 4), "ap_iou70": round(float(counts.ap[1]), 4),
                                 "seconds": round(time.perf_counter() - start, 1)}
            print(f"{path.name:24s} {condition:10s} AP@0.5 {scores[condition]['ap_iou50']:.4f}  "
                  f"AP@0.7 {scores[condition]['ap_iou70']:.4f}  ({scores[condition]['seconds']} s)", flush=True)
        changes = [scores[c]["ap_iou50"] for c in conditions if c != "untouched"]
        if changes:
            scores["mean_changed_ap_iou50"] = round(float(np.mean(changes)), 4)
            print(f"{path.name:24s} mean AP@0.5 over {len(changes)} changed conditions: {scores['mean_changed_ap_iou50']:.4f}")
        results[str(path)] = {"validation_images": len(names), "scores": scores}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
