"""Does the size estimate from a sample (band and Dask modes) agree with the whole-image estimate (in memory)?

For each test image resized by each factor (:func:`bench.rescale_set.rescale_pair`), and for mosaics of
the larger test images (2 x 3 of them, so the image is larger than the 3072² sample and the sample is not the
whole image), it estimates the object size twice with the shipped model:

* whole: :func:`segtool.infer.predict.fit_to_training_size` on the image normalised in memory
  (:func:`segtool.infer.predict.normalize_for_model`), as ``predict`` does for an image read whole;
* sampled: :func:`segtool.infer.predict.estimate_from_sample` reading the image only through
  ``read(rows, cols, step)`` (a thumbnail, then the 3072² window), with the plain whole-image percentiles
  the band and Dask schedules normalise with.

Prints one line per condition (same scale; diameters within 1.1x; the largest ratio) and a total.

Usage::

    python bench/sampled_size.py --data ../shared/data/dsb2018_fluo/test [--every 2] [--factors 0.5,1,2,4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rescale_set import rescale_pair  # noqa: E402


def _estimates(image: np.ndarray, model) -> tuple[object, object]:
    from segtool.infer.predict import estimate_from_sample, fit_to_training_size, normalize_for_model

    _, whole = fit_to_training_size(normalize_for_model(image, model), model)
    low, high = np.percentile(image, [model.config.norm_low, model.config.norm_high])
    sampled = estimate_from_sample(lambda rows, cols, step: image[rows, cols][::step, ::step], image.shape, model,
                                   percentiles=(float(low), float(high)))
    return whole, sampled


def main() -> None:
    import torch

    from segtool.model.modelfile import load_model
    from segtool.infer.predict import find_packaged_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--factors", default="0.5,1,2,4")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(find_packaged_model())
    paths = sorted((args.data / "images").glob("*.tif"))[:: args.every]
    pairs = [(tifffile.imread(p), tifffile.imread(args.data / "masks" / p.name)) for p in paths]
    large = [(i, m) for i, m in pairs if i.shape == (520, 696)][:6]
    total_same = total_close = total = 0
    for factor in [float(f) for f in args.factors.split(",")]:
        conditions = [("images", [rescale_pair(i, m, factor)[0] for i, m in pairs])]
        if len(large) == 6:
            tiles = [rescale_pair(i, m, factor)[0] for i, m in large]
            conditions.append(("mosaic", [np.block([tiles[:3], tiles[3:]])]))
        for name, images in conditions:
            same = close = 0
            worst = 1.0
            for image in images:
                whole, sampled = _estimates(image, model)
                same += int(whole.scale == sampled.scale)
                if whole.diameter and sampled.diameter:
                    ratio = max(whole.diameter, sampled.diameter) / min(whole.diameter, sampled.diameter)
                else:
                    ratio = 1.0 if whole.diameter == sampled.diameter else float("inf")
                close += int(ratio <= 1.1)
                worst = max(worst, ratio)
            shape = images[0].shape if name == "mosaic" else "various"
            print(f"factor {factor:g} {name} ({len(images)}, shape {shape}): same scale {same}/{len(images)}, "
                  f"diameter within 1.1x {close}/{len(images)}, largest ratio {worst:.3f}", flush=True)
            total_same, total_close, total = total_same + same, total_close + close, total + len(images)
    print(f"total: same scale {total_same}/{total}, diameter within 1.1x {total_close}/{total}")


if __name__ == "__main__":
    main()
