"""Where a model's errors come from on its validation images, and what shape splitting changes.

For the model's tuned post-processing, with and without ``split_height``, it
prints AP at IoU 0.5 / 0.7 and sorts every unmatched object (IoU 0.5) into:

- true nuclei: ``missed`` (no prediction covers 10% of it), ``merged`` (its
  best prediction covers more than half of two or more true nuclei), ``poor``
  (found, but outlined with IoU < 0.5);
- predictions: ``merged`` (covering two or more true nuclei), ``spurious``
  (under 10% on any nucleus), ``fragment`` (the rest: part of a nucleus).

``--smoothing`` also scores other smoothing widths of the distance map that
shape splitting takes maxima of, and every row gives the post-processing time
over all validation images; ``--upscale`` also scores predicting every
image at 2x (labels mapped back), the cure for small nuclei in tools that
rescale to a training diameter; ``--per-image`` lists every validation image
(worst first) with its AP at IoU 0.5, size, nucleus count and error counts,
to see whether the errors are spread or concentrated. Test images are never
touched.

Usage::

    python bench/study_postprocess.py segtool/models/nuclei.pt --data ../shared/data/dsb2018_fluo/train [--smoothing] [--upscale]
    python bench/study_postprocess.py runs/other.pt --data ../shared/data/dsb2018_fluo/train --postprocess-from segtool/models/nuclei.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from segtool.metrics import match_labels
from segtool.infer import instances
from segtool.infer.instances import maps_to_labels
from segtool.model.modelfile import load_model
from segtool.pipeline.options import TileOptions
from segtool.infer.predict import predict_image

from _validation import load_validation  # bench/ helper, beside this script


def error_kinds(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Count unmatched true and predicted objects by kind (see the module docstring)."""
    truth = truth.astype(np.int64)
    pred = pred.astype(np.int64)
    n_true, n_pred = int(truth.max()), int(pred.max())
    joint = np.bincount(truth.ravel() * (n_pred + 1) + pred.ravel(), minlength=(n_true + 1) * (n_pred + 1))
    joint = joint.reshape(n_true + 1, n_pred + 1)
    true_area, pred_area = joint.sum(1), joint.sum(0)
    inter = joint[1:, 1:]
    iou = inter / np.maximum(true_area[1:, None] + pred_area[None, 1:] - inter, 1)
    covers_many = (inter / np.maximum(true_area[1:, None], 1) > 0.5).sum(0) >= 2  # per prediction
    kinds = dict.fromkeys(("matched", "missed", "merged", "poor", "pred_merged", "spurious", "fragment"), 0)
    for t in range(n_true):
        best = iou[t].max() if n_pred else 0.0
        if best >= 0.5:
            kinds["matched"] += 1
        elif best < 0.1 and (inter[t].sum() / max(true_area[t + 1], 1)) < 0.1:
            kinds["missed"] += 1
        elif covers_many[iou[t].argmax()]:
            kinds["merged"] += 1
        else:
            kinds["poor"] += 1
    for p in range(n_pred):
        if n_true and iou[:, p].max() >= 0.5:
            continue
        if covers_many[p]:
            kinds["pred_merged"] += 1
        elif inter[:, p].sum() / max(pred_area[p + 1], 1) < 0.1:
            kinds["spurious"] += 1
        else:
            kinds["fragment"] += 1
    return kinds


def score(truths, label_images) -> dict:
    counts = sum(match_labels(t, p, thresholds=(0.5, 0.7)) for t, p in zip(truths, label_images))
    kinds: dict[str, int] = {}
    for t, p in zip(truths, label_images):
        for key, value in error_kinds(t, p).items():
            kinds[key] = kinds.get(key, 0) + value
    return {"ap_iou50": round(float(counts.ap[0]), 4), "ap_iou70": round(float(counts.ap[1]), 4), **kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/ holding the validation files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--postprocess-from", type=Path, help="use this (tuned) model's post-processing values instead")
    parser.add_argument("--smoothing", action="store_true", help="also score other smoothing widths for shape splitting")
    parser.add_argument("--upscale", action="store_true", help="also score predicting at 1.5x and 2x")
    parser.add_argument("--per-image", action="store_true", help="also list every image's AP@0.5 and error counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, names, images, truths = load_validation(args.model, args.data)
    target = model.config.target
    source = load_model(args.postprocess_from) if args.postprocess_from else model
    tuned = {k: v for k, v in source.config.postprocess.items() if k in ("prob_threshold", "seed_threshold", "min_size", "split_height")}
    maps = [predict_image(image, model).maps for image in images]

    def labels_for(options: dict) -> tuple[list[np.ndarray], float]:
        start = time.perf_counter()
        labels = [maps_to_labels(m, target=target, **options) for m in maps]
        return labels, round(time.perf_counter() - start, 2)

    tuned_labels, seconds = labels_for(tuned)
    print(json.dumps({"postprocess": tuned, "postprocess_seconds": seconds, **score(truths, tuned_labels)}))
    if "split_height" in tuned:
        plain = {k: v for k, v in tuned.items() if k != "split_height"}
        labels, seconds = labels_for(plain)
        print(json.dumps({"postprocess": plain, "note": "same values, no shape splitting", "postprocess_seconds": seconds,
                          **score(truths, labels)}))
    if args.smoothing and "split_height" in tuned:
        default = instances._SPLIT_SMOOTHING
        try:
            for sigma in (0.5, 1.0, 1.5, 2.0, 3.0):
                instances._SPLIT_SMOOTHING = sigma
                print(json.dumps({"smoothing": sigma, **score(truths, labels_for(tuned)[0])}))
        finally:
            instances._SPLIT_SMOOTHING = default
    if args.per_image:
        rows = []
        for name, image, truth, pred in zip(names, images, truths, tuned_labels):
            counts = match_labels(truth, pred, thresholds=(0.5,))
            rows.append({"image": name[:12], "shape": list(image.shape), "nuclei": int(truth.max()),
                         "ap_iou50": round(float(counts.ap[0]), 3), "tp": int(counts.tp[0]), "fp": int(counts.fp[0]),
                         "fn": int(counts.fn[0]), **error_kinds(truth, pred)})
        for row in sorted(rows, key=lambda r: r["ap_iou50"]):
            print(json.dumps(row))
    if args.upscale:
        for factor in (1.5, 2.0):
            upscaled = [predict_image(image, model, tiling=TileOptions(scale=factor)).labels for image in images]
            print(json.dumps({"postprocess": tuned, "scale": factor, **score(truths, upscaled)}))


if __name__ == "__main__":
    main()
