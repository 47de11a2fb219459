"""Time evaluation and export helpers on a 2048 x 2048 label image with ~2000 objects.

Run: ``python bench/bench_evaluate.py [--size 2048] [--objects 2000] [--repeat 5]``.
Prints one line per step (seconds, best of ``--repeat``) and the scores as a sanity check.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from segtool.export import geojson_features, imagej_rois, label_polygons
from segtool.measure import object_table
from segtool.metrics import match_labels, pixel_scores


def make_pair(size: int, n_objects: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of random touching/overlapping disks and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-20:21, -20:21]
    gt = np.zeros((size, size), dtype=np.uint16)
    pred = np.zeros_like(gt)
    centres = rng.integers(24, size - 24, size=(n_objects, 2))
    radii = rng.uniform(8, 18, size=n_objects)
    shifts = rng.integers(-3, 4, size=(n_objects, 2))
    for label, ((cy, cx), r, (dy, dx)) in enumerate(zip(centres, radii, shifts), start=1):
        disk = yy**2 + xx**2 <= r * r
        gt[cy - 20 : cy + 21, cx - 20 : cx + 21][disk] = label
        if label % 50:  # drop 2% of the objects from the prediction
            pred[cy + dy - 20 : cy + dy + 21, cx + dx - 20 : cx + dx + 21][disk] = label
    return gt, pred


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    gt, pred = make_pair(args.size, args.objects)
    n_true, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
    print(f"image {gt.shape}, {n_true} true objects, {n_pred} predicted objects")
    seconds, counts = best_of(lambda: match_labels(gt, pred), args.repeat)
    print(f"match_labels (10 thresholds 0.5..0.95): {seconds:.3f} s")
    seconds, _ = best_of(lambda: match_labels(gt, pred, thresholds=np.linspace(0.1, 0.95, 18)), args.repeat)
    print(f"match_labels (18 thresholds 0.1..0.95): {seconds:.3f} s")
    seconds, scores = best_of(lambda: pixel_scores(gt, pred), args.repeat)
    print(f"pixel_scores: {seconds:.3f} s")
    seconds, polygons = best_of(lambda: label_polygons(gt), args.repeat)
    print(f"label_polygons (outlines of every object): {seconds:.3f} s")
    seconds, _ = best_of(lambda: imagej_rois(polygons), args.repeat)
    print(f"imagej_rois: {seconds:.3f} s")
    seconds, table = best_of(lambda: object_table(gt), 1)
    print(f"object_table (regionprops_table, 17 columns): {seconds:.3f} s")
    seconds, _ = best_of(lambda: geojson_features(polygons, table=table), args.repeat)
    print(f"geojson_features: {seconds:.3f} s")
    print(f"AP@0.5 {counts.ap[0]:.3f}  F1@0.5 {counts.f1[0]:.3f}  AP@0.9 {counts.ap[-2]:.3f}  pixel Dice {scores['dice']:.3f}")


if __name__ == "__main__":
    main()
