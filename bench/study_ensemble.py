"""Would averaging several models' maps beat each model alone? Scored on shared validation images.

Every model must have held out the same validation images (train the others
with ``segtool train ... --seed N --val-seed 0`` to keep the first run's
images) and have the same target. Each model's maps are computed once per
validation image; then each model alone and the pixel-wise mean of all their
maps (an ensemble) are turned into labels with the *first* model's tuned
post-processing values, and scored with AP at IoU 0.5 and 0.7 (summed counts).
``--tune`` also re-tunes the foreground and seed thresholds for the ensemble
on the same images (optimistic: tuned and scored on the same 56 images, as the
single models' values were). Test images are never touched.

Usage::

    python bench/study_ensemble.py runs/a_tuned.pt runs/b.pt --data ../shared/data/dsb2018_fluo/train [--tune]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from segtool.metrics import match_labels
from segtool.infer.instances import maps_to_labels
from segtool.model.modelfile import load_model
from segtool.infer.predict import predict_image

from _validation import load_validation  # bench/ helper, beside this script

KEYS = ("prob_threshold", "seed_threshold", "min_size", "split_height")


def score(truths, maps, target, options) -> dict:
    labels = [maps_to_labels(m, target=target, **options) for m in maps]
    counts = sum(match_labels(t, p, thresholds=(0.5, 0.7)) for t, p in zip(truths, labels))
    return {"ap_iou50": round(float(counts.ap[0]), 4), "ap_iou70": round(float(counts.ap[1]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/ holding the validation files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune", action="store_true", help="also tune the ensemble's thresholds on the same images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if len(args.models) < 2:
        raise SystemExit("give two or more models")

    first, names, images, truths = load_validation(args.models[0], args.data)
    others = [load_model(path) for path in args.models[1:]]
    for path, model in zip(args.models[1:], others):
        if model.metadata.get("validation_files") != names:
            raise SystemExit(f"{path}: held out other validation images than {args.models[0]} (train it with --val-seed)")
        if model.config.target != first.config.target:
            raise SystemExit(f"{path}: target {model.config.target} differs from {first.config.target}")
    target = first.config.target
    options = {k: v for k, v in first.config.postprocess.items() if k in KEYS}
    maps = [[predict_image(image, model).maps for image in images] for model in [first, *others]]
    for path, model_maps in zip(args.models, maps):
        print(json.dumps({"model": str(path), "postprocess": options, **score(truths, model_maps, target, options)}))
    mean = [np.mean(per_image, axis=0) for per_image in zip(*maps)]
    print(json.dumps({"model": "mean of the maps", "postprocess": options, **score(truths, mean, target, options)}))
    if args.tune:
        best = None
        for prob, seed in itertools.product((0.4, 0.5, 0.6, 0.7), (0.3, 0.4, 0.5, 0.6)):
            tuned = {**options, "prob_threshold": prob, "seed_threshold": seed}
            result = score(truths, mean, target, tuned)
            if best is None or (result["ap_iou50"], result["ap_iou70"]) > (best[1]["ap_iou50"], best[1]["ap_iou70"]):
                best = (tuned, result)
        print(json.dumps({"model": "mean of the maps, thresholds tuned on these images", "postprocess": best[0], **best[1]}))


if __name__ == "__main__":
    main()
