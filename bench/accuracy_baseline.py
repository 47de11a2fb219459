"""Object-level accuracy of ``segment_baseline`` on real and synthetic nuclei.

Compares three methods, each followed by the same labelling and ``min_size``
filter:

* ``otsu (no correction)``: Otsu threshold of the raw image;
* ``baseline``: ``segment_baseline`` with its defaults;
* ``baseline --split``: the same with the distance-transform watershed.

on (a) a split of the shared ``dsb2018_fluo`` data set and (b) synthetic images
with uneven illumination from :func:`segtool.synthetic.make_nuclei_image`.
Scores are F1, precision and recall at IoU 0.5 from the summed match counts
over all images of a set (``segtool.metrics.match_labels``).

Run (reporting uses the test split; tune only with ``--split train``)::

    python bench/accuracy_baseline.py --split test --synthetic 20

Not run by pytest.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from segtool.baseline import segment_baseline
from segtool.errors import InputError
from segtool.metrics import match_labels
from segtool.synthetic import make_nuclei_image

DATA = Path("/work/shared/data/dsb2018_fluo")


def plain_otsu(image: np.ndarray, *, min_size: int) -> np.ndarray:
    """Otsu on the raw image, 8-connected labels, objects under ``min_size`` dropped."""
    image = np.asarray(image, dtype=np.float32)
    if image.min() == image.max():
        return np.zeros(image.shape, dtype=np.uint16)
    labels, _ = ndi.label(image > threshold_otsu(image), structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.cumsum(keep) * keep
    return lut[labels].astype(np.uint32)


def methods(min_size: int | None, extra: dict) -> dict:
    """name -> function(image) -> labels."""
    size = inspect.signature(segment_baseline).parameters["min_size"].default if min_size is None else min_size
    options = dict(extra)
    if min_size is not None:
        options["min_size"] = min_size
    return {
        "otsu (no correction)": lambda im: plain_otsu(im, min_size=size),
        "baseline": lambda im: segment_baseline(im, **options).labels,
        "baseline --split": lambda im: segment_baseline(im, split=True, **options).labels,
    }


def real_pairs(split: str, limit: int | None):
    paths = sorted((DATA / split / "images").glob("*.tif"))[:limit]
    for path in paths:
        yield path.stem, tifffile.imread(path), tifffile.imread(DATA / split / "masks" / path.name)


def synthetic_pairs(count: int, size: int):
    for seed in range(count):
        illumination = "gradient" if seed % 2 == 0 else "vignette"
        image, labels = make_nuclei_image(
            (size, size), n_nuclei=max(10, size * size // 2200), seed=1000 + seed, illumination=illumination
        )
        yield f"synthetic-{seed}", image, labels


def evaluate(pairs, funcs: dict) -> dict:
    totals = {name: None for name in funcs}
    seconds = {name: 0.0 for name in funcs}
    n_images = n_true = 0
    for _name, image, truth in pairs:
        n_images += 1
        n_true += int(truth.max())
        for name, func in funcs.items():
            start = time.perf_counter()
            try:
                pred = func(image)
            except InputError:
                pred = np.zeros(truth.shape, dtype=np.uint16)
            seconds[name] += time.perf_counter() - start
            counts = match_labels(truth, pred, thresholds=(0.5,))
            totals[name] = counts if totals[name] is None else totals[name] + counts
    return {"images": n_images, "objects": n_true, "totals": totals, "seconds": seconds}


def report(title: str, result: dict) -> None:
    print(f"\n{title}: {result['images']} images, {result['objects']} true objects")
    print("| method | F1@0.5 | precision | recall | TP | FP | FN | ms/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, counts in result["totals"].items():
        ms = 1000 * result["seconds"][name] / max(result["images"], 1)
        print(
            f"| {name} | {counts.f1[0]:.3f} | {counts.precision[0]:.3f} | {counts.recall[0]:.3f} "
            f"| {int(counts.tp[0])} | {int(counts.fp[0])} | {int(counts.fn[0])} | {ms:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--split", default="test", choices=("train", "test"), help="dsb2018_fluo split (tune on train only)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of the split")
    parser.add_argument("--synthetic", type=int, default=20, help="number of synthetic images (0 = skip)")
    parser.add_argument("--synthetic-size", type=int, default=512, help="side of the synthetic images")
    parser.add_argument("--min-size", type=int, default=None, help="override min_size (default: library default)")
    parser.add_argument("--smooth", type=float, default=None, help="override smooth")
    parser.add_argument("--degree", type=int, default=None, help="override degree")
    parser.add_argument("--threshold", default=None, help="override threshold method")
    args = parser.parse_args()
    overrides = (("smooth", args.smooth), ("degree", args.degree), ("threshold", args.threshold))
    extra = {k: v for k, v in overrides if v is not None}
    funcs = methods(args.min_size, extra)
    size_note = f", min_size={args.min_size}" if args.min_size is not None else ""
    print(f"options: {extra or 'library defaults'}{size_note}")
    report(f"dsb2018_fluo/{args.split}", evaluate(real_pairs(args.split, args.limit), funcs))
    if args.synthetic:
        report(
            f"synthetic uneven illumination ({args.synthetic_size}x{args.synthetic_size}, "
            "gradient/vignette alternating)",
            evaluate(synthetic_pairs(args.synthetic, args.synthetic_size), funcs),
        )


if __name__ == "__main__":
    main()
