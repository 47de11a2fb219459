"""Write a training set resized by a factor: images interpolated linearly, masks by nearest neighbour.

For the scale experiment of MODELS.md (``nuclei-he``): a network trained on
images enlarged by F sees small nuclei with F^2 times the pixels, and
``segtool predict --scale F`` shows it new images enlarged the same way
(its maps come back to full size before objects are made). The files keep
their names, so ``--val-seed`` holds out the same images as on the original
set.

Usage::

    python bench/rescale_set.py ../shared/data/dsb2018_histo/train runs/histo_x2 --factor 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import rescale


def rescale_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` ((H, W) or (H, W, C) samples last) and its ``labels`` resized by ``factor``, types kept."""
    channel_axis = -1 if image.ndim == 3 else None
    big = rescale(image.astype(np.float64), factor, order=1, anti_aliasing=False, channel_axis=channel_axis)
    if np.issubdtype(image.dtype, np.integer):
        big = np.clip(np.round(big), np.iinfo(image.dtype).min, np.iinfo(image.dtype).max)
    big_labels = rescale(labels, factor, order=0, preserve_range=True, anti_aliasing=False)
    return big.astype(image.dtype), big_labels.astype(labels.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with images/ and masks/ (same file names)")
    parser.add_argument("output", type=Path, help="new folder; gets images/ and masks/")
    parser.add_argument("--factor", type=float, default=2.0)
    args = parser.parse_args()
    (args.output / "images").mkdir(parents=True, exist_ok=False)
    (args.output / "masks").mkdir(parents=True)
    paths = sorted(p for p in (args.source / "images").iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    for path in paths:
        image = tifffile.imread(path)
        image, labels = rescale_pair(image, tifffile.imread(args.source / "masks" / path.name), args.factor)
        tifffile.imwrite(args.output / "images" / path.name, image, photometric="rgb" if image.ndim == 3 else None)
        tifffile.imwrite(args.output / "masks" / path.name, labels)
    print(f"{len(paths)} image/mask pairs resized by {args.factor} into {args.output}")


if __name__ == "__main__":
    main()
