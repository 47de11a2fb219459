"""Tune a model's post-processing thresholds on its own validation images.

The network's maps are computed once per validation image (the images the
training run held out, listed in the model's metadata); then a grid of
foreground / seed thresholds and minimum sizes is scored with AP at IoU 0.5
(summed counts), then a second grid that also splits seed regions by shape
(``split_height``, with the first grid's best minimum size), and the best
values are written into a copy of the model
(``config.postprocess``), which ``segtool predict`` uses as its defaults.
Test images are never touched.

Usage::

    python bench/tune_postprocess.py MODEL.pt --data ../shared/data/dsb2018_fluo/train -o tuned.pt [--half]

``--min-sizes 20,30,40`` replaces the grid's minimum object sizes.
``--half`` stores the weights in float16 (half the file size; logits change
by about 1e-3). ``--tta`` scores maps averaged over the 8 flips/rotations
(what ``segtool predict --tta`` computes), to see what TTA is worth.
``--scale F`` computes the maps of images resized by F, as ``segtool predict
--scale F`` does (maps come back to full size; thresholds and minimum sizes
apply there).

``--held-out-check`` guards against tuning on too few images: each
validation image in turn is left out, the grid's best settings on the others
are scored on it, and the counts are summed over the images so left out. The
tuned settings are written only if that held-out AP beats the defaults' AP
on the same images; otherwise the model keeps segtool's defaults (and says
so in its metadata). The check uses validation images only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from segtool.metrics import match_labels
from segtool.infer.instances import DEFAULT_SEED_THRESHOLD, maps_to_labels
from segtool.pipeline.options import TileOptions, postprocess_options
from segtool.infer.predict import predict_image

from _payload import save_payload  # bench/ helpers, beside this script
from _validation import load_validation

PROB_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# Seeds: interior probability for three_class (high values keep only nucleus cores, which splits touching
# nuclei); normalised distance to the border for distance models.
SEED_THRESHOLDS = {
    "three_class": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995),
    "distance": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "three_class_distance": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
}
MIN_SIZES = (10, 20, 30)
# Second stage, with the best minimum size of the first: split seed regions by shape (h-maxima of the distance
# to the seed region's edge, in pixels). Splitting lets lower seed thresholds work, hence their own grid.
SPLIT_HEIGHTS = (0.25, 0.5, 0.75, 1.0)
SPLIT_SEED_THRESHOLDS = {
    "three_class": (0.5, 0.6, 0.7, 0.8, 0.9),
    "distance": (0.1, 0.2, 0.3, 0.4, 0.5),
    "three_class_distance": (0.1, 0.2, 0.3, 0.4, 0.5),
}


def summary(counts) -> dict:
    return {"f1_iou50": float(counts.f1[0]), "ap_iou50": float(counts.ap[0]), "ap_iou70": float(counts.ap[1])}


def held_out_scores(per_image: dict, default: dict, rank) -> dict:
    """Leave-one-image-out: tune on the other images, score on the one left out; counts summed over all."""
    settings = list(per_image)
    images = len(next(iter(per_image.values())))
    default_key = next(k for k in settings if all(default[name] == value for name, value in k))
    tuned = defaults = None
    for left in range(images):
        def on_others(key):
            return rank(summary(sum(c for i, c in enumerate(per_image[key]) if i != left)))
        chosen = max(settings, key=on_others)
        tuned = per_image[chosen][left] if tuned is None else tuned + per_image[chosen][left]
        defaults = per_image[default_key][left] if defaults is None else defaults + per_image[default_key][left]
    return {"tuned": summary(tuned), "defaults": summary(defaults), "images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/ holding the validation files")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--half", action="store_true", help="store weights as float16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="score maps averaged over 8 flips/rotations (predict --tta)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="resize images by this factor before the network, as predict --scale (labels at full size)")
    parser.add_argument(
        "--min-sizes",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        default=MIN_SIZES,
        help=f"comma-separated minimum object sizes (px) for the grid (default {','.join(map(str, MIN_SIZES))})",
    )
    parser.add_argument("--held-out-check", action="store_true",
                        help="keep the defaults unless tuning wins on images left out of it (leave-one-image-out)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, names, images, truths = load_validation(args.model, args.data)
    target = model.config.target

    start = time.perf_counter()
    maps = [predict_image(image, model, tiling=TileOptions(tta=args.tta, scale=args.scale)).maps for image in images]
    predict_seconds = time.perf_counter() - start

    per_image = {}  # settings -> the match counts of each validation image, for the held-out check

    def score(record: bool = True, **options) -> dict:
        counts = [
            match_labels(truth, maps_to_labels(m, target=target, **options), thresholds=(0.5, 0.7))
            for m, truth in zip(maps, truths)
        ]
        if record:  # a grid setting, a candidate of the held-out check
            per_image[tuple(options.items())] = counts
        return {**options, **summary(sum(counts))}

    def rank(row: dict) -> tuple[float, float]:
        return row["ap_iou50"], row["ap_iou70"]

    start = time.perf_counter()
    results = [
        score(prob_threshold=prob, seed_threshold=seed, min_size=min_size, split_height=None)
        for prob, seed, min_size in itertools.product(PROB_THRESHOLDS, SEED_THRESHOLDS[target], args.min_sizes)
    ]
    best_min_size = max(results, key=rank)["min_size"]
    results += [
        score(prob_threshold=prob, seed_threshold=seed, min_size=best_min_size, split_height=split)
        for prob, seed, split in itertools.product(PROB_THRESHOLDS, SPLIT_SEED_THRESHOLDS[target], SPLIT_HEIGHTS)
    ]
    grid_seconds = time.perf_counter() - start
    results.sort(key=rank, reverse=True)
    best = results[0]
    default_seed = DEFAULT_SEED_THRESHOLD[target]
    default = next(
        (r for r in results if r["prob_threshold"] == 0.5 and r["seed_threshold"] == default_seed and r["min_size"] == 20 and r["split_height"] is None),
        None,
    ) or score(prob_threshold=0.5, seed_threshold=default_seed, min_size=20, split_height=None)
    print(f"validation images: {len(names)}; network maps{' (TTA)' if args.tta else ''} in {predict_seconds:.1f} s; "
          f"{len(results)} settings scored in {grid_seconds:.0f} s")
    print(f"defaults (0.5 / {default_seed} / 20):", json.dumps(default))
    own = postprocess_options(model.config)
    if own:  # what predict and the training log use for this model (a child made with --init inherits its parent's)
        print("the model's own settings:", json.dumps(score(record=False, **own)))
    print("best without splitting:", json.dumps(next(r for r in results if r["split_height"] is None)))
    print("best:", json.dumps(best))
    for row in results[:8]:
        print(json.dumps(row))
    held_out = None
    if args.held_out_check:
        held_out = held_out_scores(per_image, default, rank)
        print("held out, one image at a time:", json.dumps(held_out))
        if held_out["tuned"]["ap_iou50"] <= held_out["defaults"]["ap_iou50"]:
            print("tuning does not beat the defaults on held-out images: the model keeps the defaults")
            best = default

    payload = torch.load(args.model, map_location="cpu", weights_only=True)
    config = json.loads(payload["config"])
    keys = ("prob_threshold", "seed_threshold", "min_size", "split_height")
    config["postprocess"] = {k: best[k] for k in keys if best[k] is not None}
    metadata = json.loads(payload["metadata"])
    metadata["postprocess_tuning"] = {
        "on": f"{len(names)} validation images held out of the training split",
        "criterion": "AP at IoU 0.5 (TP/(TP+FP+FN)), summed counts",
        "tta": bool(args.tta),
        "before": default,
        "after": best,
    }
    if held_out is not None:
        metadata["postprocess_tuning"]["held_out_check"] = held_out
    payload["config"] = json.dumps(config)
    payload["metadata"] = json.dumps(metadata)
    if args.half:
        payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    save_payload(payload, args.output)  # atomically, and reloaded: no file left that does not load
    print(args.output)


if __name__ == "__main__":
    main()
