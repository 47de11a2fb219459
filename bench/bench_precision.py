"""Inference in float32 versus bfloat16: speed, and whether the objects change.

For one model and a folder of images, every image is segmented with
:func:`segtool.infer.predict.predict_image` twice per round, once with the
network prepared in each precision (``prepare_for_inference(precision=...)``,
what ``segtool predict --precision`` does). The two alternate round by round
so other load on the machine hits both alike; the median wall time over rounds
is reported, with the bf16 / fp32 speed-up measured in the same run. Then:

* agreement: object F1 at IoU 0.5 between the two label sets (summed over
  images), and the largest and mean absolute difference of the maps;
* accuracy, when ``--masks`` is given: AP at IoU 0.5 and 0.7 and F1 at 0.5 of
  each precision against the true masks (summed counts, as ``segtool
  evaluate`` reports them).

Run::

    python bench/bench_precision.py segtool/models/nuclei.pt --images ../shared/data/dsb2018_fluo/test/images \\
        --masks ../shared/data/dsb2018_fluo/test/masks --rounds 2
    python bench/bench_precision.py runs/model.pt --images DIR --tta

Not run by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from segtool.io import read_image, read_labels
from segtool.metrics import match_labels
from segtool.model.modelfile import LoadedModel, load_model
from segtool.model.precision import bf16_supported
from segtool.pipeline.options import TileOptions
from segtool.infer.predict import predict_image
from segtool.infer.network import prepare_for_inference

PRECISIONS = ("fp32", "bf16")


def segment_all(model: LoadedModel, images: list[np.ndarray], tta: bool) -> tuple[float, list]:
    start = time.perf_counter()
    results = [predict_image(image, model, tiling=TileOptions(tta=tta)) for image in images]
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--masks", type=Path, help="folder of true masks with the same file names")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted(args.images.glob("*.tif"))
    if not paths:
        raise SystemExit(f"{args.images}: no .tif images")
    images = [read_image(p).data for p in paths]
    loaded = load_model(args.model)
    models = {
        p: LoadedModel(net=prepare_for_inference(loaded.net, precision=p), config=loaded.config, metadata=loaded.metadata)
        for p in PRECISIONS
    }
    segment_all(models["fp32"], images[:1], args.tta)  # warm-up: first calls pick kernels
    segment_all(models["bf16"], images[:1], args.tta)

    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    results: dict[str, list] = {}
    for round_ in range(args.rounds):
        for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
            elapsed, results[precision] = segment_all(models[precision], images, args.tta)
            seconds[precision].append(elapsed)
            print(f"  round {round_ + 1} {precision}: {elapsed:.1f} s", flush=True)

    pixels = sum(image.size for image in images) / 1e6
    print()
    print(f"{args.model}: {len(images)} images ({pixels:.1f} Mpixel) from {args.images}, {args.threads} threads, "
          f"tta {args.tta}, median of {args.rounds} rounds; native bf16 on this CPU: {bf16_supported(torch.device('cpu'))}")
    print()
    truths = [read_labels(args.masks / p.name).data for p in paths] if args.masks else None
    header = "| precision | wall s | Mpixel/s |" + (" AP@0.5 | AP@0.7 | F1@0.5 |" if truths else "")
    print(header)
    print("|---|---:|---:|" + ("---:|---:|---:|" if truths else ""))
    for precision in PRECISIONS:
        wall = statistics.median(seconds[precision])
        row = f"| {precision} | {wall:.1f} | {pixels / wall:.2f} |"
        if truths:
            counts = sum(match_labels(t, r.labels, thresholds=(0.5, 0.7)) for t, r in zip(truths, results[precision]))
            row += f" {counts.ap[0]:.3f} | {counts.ap[1]:.3f} | {counts.f1[0]:.3f} |"
        print(row)
    agreement = sum(match_labels(a.labels, b.labels, thresholds=(0.5,)) for a, b in zip(results["fp32"], results["bf16"]))
    gaps = [np.abs(a.maps - b.maps) for a, b in zip(results["fp32"], results["bf16"])]
    print()
    print(f"bf16 / fp32 speed-up: {statistics.median(seconds['fp32']) / statistics.median(seconds['bf16']):.2f}x; "
          f"objects agree at F1@0.5 {agreement.f1[0]:.4f}; maps differ by max {max(g.max() for g in gaps):.3f}, "
          f"mean {np.mean([g.mean() for g in gaps]):.1e}")


if __name__ == "__main__":
    main()
