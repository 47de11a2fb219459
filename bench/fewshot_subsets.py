"""Make the training folders of a few-shot study: N images, with the validation images held apart.

The validation images are those ``segtool train DATA --val-seed SEED`` holds out of DATA (the same
rule, :func:`segtool.train.dataset.split_validation`), so every few-shot run is chosen and compared on
the same held-out images as a run on the whole folder. The N training images are the first N of one
seeded permutation of the remaining ones, so the subsets are nested (5 within 10 within 20). Files
are symbolic links; nothing is copied.

Usage::

    python bench/fewshot_subsets.py ../shared/data/dsb2018_histo/train -o runs/fewshot --sizes 5,10,20 --seed 0

writes ``runs/fewshot/val/{images,masks}`` and ``runs/fewshot/nN/{images,masks}``; then for example::

    segtool train runs/fewshot/n5 --val runs/fewshot/val/images runs/fewshot/val/masks -o runs/fs_ft5.pt ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segtool.cli.train import find_pairs
from segtool.train.dataset import split_validation


def _link(pairs, folder: Path) -> None:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=False)
    for pair in pairs:
        (folder / "images" / pair.image.name).symlink_to(pair.image.resolve())
        (folder / "masks" / pair.mask.name).symlink_to(pair.mask.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with images/ and masks/ (the training split)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="new folder for the subsets")
    parser.add_argument("--sizes", default="5,10,20", help="training images per subset, comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset permutation")
    parser.add_argument("--val-seed", type=int, default=0, help="as segtool train --val-seed")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="as segtool train --val-fraction")
    args = parser.parse_args()

    pairs = find_pairs([str(args.data)])
    train_idx, val_idx = split_validation(len(pairs), args.val_fraction, np.random.default_rng(args.val_seed))
    order = np.random.default_rng(args.seed).permutation(np.asarray(train_idx))
    _link([pairs[i] for i in val_idx], args.output / "val")
    print(f"val: {len(val_idx)} images")
    for size in (int(s) for s in args.sizes.split(",")):
        if not 1 <= size <= len(order):
            raise SystemExit(f"--sizes: {size} is not between 1 and {len(order)}")
        chosen = sorted(int(i) for i in order[:size])
        _link([pairs[i] for i in chosen], args.output / f"n{size}")
        print(f"n{size}: " + " ".join(pairs[i].image.stem[:8] for i in chosen))


if __name__ == "__main__":
    main()
