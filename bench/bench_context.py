"""Measure the effective context of a U-Net: the halo tiled inference needs.

Predicts a mosaic of real images whole, then probe tiles of it, and reports
how far from a cut tile edge the maps still differ from whole-image inference
by more than the tolerance (:func:`segtool.model.context.measure_context`).

Run::

    python bench/bench_context.py --data ../shared/data/dsb2018_fluo/train/images
    python bench/bench_context.py -m my_model.pt --precision fp32 --data my_images/

Not run by pytest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mosaic import make_mosaic  # noqa: E402

from segtool.normalize import normalize_percentile  # noqa: E402
from segtool.model.context import measure_context  # noqa: E402
from segtool.infer.predict import find_packaged_model  # noqa: E402
from segtool.infer.network import load_for_inference, make_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", type=Path, default=None, help="model file (default: the shipped one)")
    parser.add_argument("--data", type=Path, required=True, help="folder of images for the mosaic (train split)")
    parser.add_argument("--side", type=int, default=768)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    model = load_for_inference(args.model or find_packaged_model(), device="cpu", precision=args.precision)
    config = model.config
    predictor = make_predictor(model.net, config.target)
    worst = 0
    for seed in args.seeds:
        raw = make_mosaic(args.data, args.side, seed=seed)
        image = normalize_percentile(raw, config.norm_low, config.norm_high)
        profile = measure_context(image, predictor, tile=args.tile, align=config.size_multiple, tolerance=args.tolerance)
        worst = max(worst, profile.context)
        shown = {d: float(f"{profile.max_diff[d]:.2e}") for d in range(0, len(profile.max_diff), 8)}
        print(f"seed {seed}: context {profile.context} px (max |diff| at distance >= d: {shown})")
    print(f"context (largest over seeds): {worst} px at tolerance {args.tolerance}, precision {args.precision}")


if __name__ == "__main__":
    main()
