"""How well a model finds objects of each size, on the validation images its training run held out.

For every true object: the best IoU any predicted object reaches with it.
The median ratio of predicted to true area over the objects found says
whether boundaries are biased (too tight or too loose). Objects are grouped
by area; each group prints how many there are and the
share found at IoU 0.5 and 0.7. It says where the errors are (the
``nuclei-he`` study in MODELS.md found them in the small nuclei). Uses the
model's own post-processing; validation images only.

Usage::

    python bench/iou_by_size.py segtool/models/nuclei_he.pt --data ../shared/data/dsb2018_histo/train
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _validation import load_validation
from segtool.metrics import iou_pairs
from segtool.pipeline.options import TileOptions
from segtool.infer.predict import predict_image

AREA_EDGES = (0, 100, 200, 400, 800, np.inf)


def best_iou_per_object(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per true object: its area, the best IoU any predicted object reaches with it (0 where none overlaps),
    and that predicted object's area (0 where none)."""
    pairs = iou_pairs(truth, predicted)
    areas = pairs["true_areas"]
    best = np.zeros(len(areas))
    best_areas = np.zeros(len(areas), dtype=np.int64)
    # pairs sorted by IoU, so for each true object the last write is its best partner
    for k in np.argsort(pairs["iou"], kind="stable"):
        row = pairs["rows"][k]
        best[row] = pairs["iou"][k]
        best_areas[row] = pairs["pred_areas"][pairs["cols"][k]]
    return areas, best, best_areas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="training folder with images/ and masks/")
    parser.add_argument("--scale", type=float, default=1.0, help="as predict --scale")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, names, images, truths = load_validation(args.model, args.data)
    pairs = [best_iou_per_object(truth, predict_image(image, model, tiling=TileOptions(scale=args.scale)).labels)
             for image, truth in zip(images, truths)]
    areas, ious, predicted_areas = (np.concatenate(column) for column in zip(*pairs))
    matched = ious > 0.5
    print(f"{len(names)} validation images, {len(areas)} true objects; predicted / true area of the objects found at "
          f"IoU 0.5: median {np.median(predicted_areas[matched] / areas[matched]):.2f}")
    for low, high in zip(AREA_EDGES[:-1], AREA_EDGES[1:]):
        group = (areas >= low) & (areas < high)
        if group.any():
            print(f"area {low}-{high} px: {int(group.sum())} objects, found at IoU 0.5 {np.mean(ious[group] > 0.5):.2f}, "
                  f"at IoU 0.7 {np.mean(ious[group] > 0.7):.2f}, median best IoU {np.median(ious[group]):.2f}")


if __name__ == "__main__":
    main()
