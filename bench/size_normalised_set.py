"""Write a training set resized per image the way ``predict --diameter auto`` resizes images.

``predict`` keeps an image whose objects are within ``keep_always`` (1.3x) of
the model's training diameter, enlarges smaller ones to the band's lower edge
(``enlarge_to_edge``) and shrinks larger ones to the training diameter
(:func:`segtool.infer.sizing.scale_for_estimate`, applied here as it is). A network trained on the
images at their own sizes has seen 45-50 px nuclei only at 45-50 px, yet
``predict`` shows them to it at 21 px. This script applies the same mapping
to each training image, from its annotated median diameter, so a fine-tune
sees what ``predict`` will show it: images linearly interpolated (with
anti-aliasing when shrinking, as ``predict`` does), masks by nearest
neighbour. The files keep their names, so ``--val-seed`` holds out the same
images.

Usage::

    python bench/size_normalised_set.py ../shared/data/dsb2018_fluo/train runs/fluo_sizenorm --diameter 20.96
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import resize

from segtool.infer.sizing import median_diameter, resize_channels, scale_for_estimate

from _sweep import scaled_shape  # bench/ helper, beside this script


def resize_pair(image: np.ndarray, labels: np.ndarray, scale: float, *,
                integers: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ((H, W) or (H, W, C)) and ``labels`` (nearest neighbour) resized by ``scale``.

    The image comes back as float32 (``predict`` resizes the normalised image in float), or with ``integers`` in
    its own integer type, rounded: a model that reads the hematoxylin density scales a float image by its maximum
    but an integer one by its type's, so stained tissue keeps its type.
    """
    shape = scaled_shape(image.shape, scale)
    planes = image.astype(np.float32)
    planes = planes[None] if planes.ndim == 2 else np.moveaxis(planes, -1, 0)
    resized = resize_channels(np.ascontiguousarray(planes), shape)
    resized = resized[0] if image.ndim == 2 else np.moveaxis(resized, 0, -1)
    if integers and np.issubdtype(image.dtype, np.integer):
        limits = np.iinfo(image.dtype)
        resized = np.clip(np.round(resized), limits.min, limits.max).astype(image.dtype)
    # skimage's nearest neighbour, as the set nuclei v13 was trained on was made (_sweep.resize_labels picks the other
    # pixel at exact ties: 16 of the 291 resized fluorescence masks would differ)
    new_labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    return np.ascontiguousarray(resized), new_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with images/ and masks/ (same file names)")
    parser.add_argument("output", type=Path, help="new folder; gets images/, masks/ and scales.json")
    parser.add_argument("--diameter", type=float, required=True, help="the model's training diameter (px)")
    parser.add_argument("--integers", action="store_true", help="keep integer images integer (stained tissue)")
    args = parser.parse_args()
    # checked before anything is written, so a mistake leaves no half-made set behind
    if not (args.source / "images").is_dir() or not (args.source / "masks").is_dir():
        raise SystemExit(f"{args.source}: needs images/ and masks/ folders")
    if args.output.exists():
        raise SystemExit(f"{args.output}: exists already; give a new folder")
    if not args.diameter > 0:
        raise SystemExit(f"--diameter must be positive, got {args.diameter}")
    paths = sorted(p for p in (args.source / "images").iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    (args.output / "images").mkdir(parents=True)
    (args.output / "masks").mkdir(parents=True)
    scales = {}
    for path in paths:
        image, labels = tifffile.imread(path), tifffile.imread(args.source / "masks" / path.name)
        diameter, _ = median_diameter(labels)
        scale = scale_for_estimate(diameter, args.diameter) if diameter > 0 else 1.0
        if scale != 1.0:
            image, labels = resize_pair(image, labels, scale, integers=args.integers)
        scales[path.name] = {"diameter": round(diameter, 2), "scale": round(scale, 4)}
        tifffile.imwrite(args.output / "images" / path.name, image, photometric="rgb" if image.ndim == 3 else None)
        tifffile.imwrite(args.output / "masks" / path.name, labels)
    (args.output / "scales.json").write_text(json.dumps(scales, indent=1))
    moved = sum(1 for s in scales.values() if s["scale"] != 1.0)
    print(f"{len(paths)} image/mask pairs into {args.output}; {moved} resized")


if __name__ == "__main__":
    main()
