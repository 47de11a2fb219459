"""How the tiling and flip averaging change a model's accuracy on its validation images.

The question behind it: the halo tiling (each pixel predicted once, with
enough context) scores a little lower than the earlier blended tiling (128²
tiles overlapping by 25 %, 2-4 predictions averaged per pixel). Is that
context, or an ensemble effect? Each mode computes the maps of every
validation image (the images the model's training run held out), turns them
into labels with the model's stored post-processing, and scores AP at IoU 0.5
and 0.7 (summed counts) and F1@0.5:

* ``halo``: segtool's default tiling;
* ``overlap``: ``--overlap 0.25`` (the earlier blended 128² tiles);
* ``flip2`` / ``flip4``: the halo tiling on the image and its horizontal
  (and vertical, and both) flips, maps flipped back and averaged;
* ``tta8``: ``--tta`` (8 flips and rotations).

Test images are never touched. Usage::

    python bench/study_tiling.py segtool/models/nuclei.pt --data ../shared/data/dsb2018_fluo/train halo overlap flip2 flip4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from segtool.metrics import match_labels
from segtool.infer.instances import maps_to_labels
from segtool.pipeline.options import TileOptions
from segtool.infer.predict import predict_image

from _validation import load_validation  # bench/ helper, beside this script

FLIPS = {"flip2": [(), (-1,)], "flip4": [(), (-1,), (-2,), (-2, -1)]}


def maps_of(image: np.ndarray, model, mode: str) -> np.ndarray:
    if mode == "halo":
        return predict_image(image, model).maps
    if mode == "overlap":
        return predict_image(image, model, tiling=TileOptions(overlap=0.25)).maps
    if mode == "tta8":
        return predict_image(image, model, tiling=TileOptions(tta=True)).maps
    total = 0
    for axes in FLIPS[mode]:
        flipped = np.ascontiguousarray(np.flip(image, axes)) if axes else image
        maps = predict_image(flipped, model).maps
        total = total + (np.flip(maps, axes) if axes else maps)
    return total / len(FLIPS[mode])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/ holding the validation files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("modes", nargs="+", choices=["halo", "overlap", "flip2", "flip4", "tta8"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, names, images, truths = load_validation(args.model, args.data)
    options = {k: v for k, v in model.config.postprocess.items()}
    print(f"{args.model.name}: {len(names)} validation images; post-processing {options}")
    print("| mode | AP@0.5 | AP@0.7 | F1@0.5 | maps (s) |")
    print("|---|---:|---:|---:|---:|")
    for mode in args.modes:
        start = time.perf_counter()
        maps = [maps_of(image, model, mode) for image in images]
        seconds = time.perf_counter() - start
        counts = sum(match_labels(truth, maps_to_labels(m, target=model.config.target, **options), thresholds=(0.5, 0.7))
                     for m, truth in zip(maps, truths))
        print(f"| {mode} | {float(counts.ap[0]):.4f} | {float(counts.ap[1]):.4f} | {float(counts.f1[0]):.4f} | {seconds:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
