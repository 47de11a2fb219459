"""What the automatic size estimate costs: ``predict`` with ``--diameter auto`` against the same run at a fixed scale.

Both runs are the whole in-memory predict of one image (normalise, network,
objects) with the shipped model, alternated ``--rounds`` times in one process
(the model loaded once); the fixed run uses the scale the estimate chose, so
the ratio is the estimate's own cost (the issue's budget: at most 1.3x on a
2048² image). Printed: medians, the ratio, the estimate and its ladder.

Run::

    python bench/bench_sizing.py --side 2048 --threads 2 --rounds 3

Not run by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mosaic import make_mosaic  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018_fluo" / "test" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of images for the mosaic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--scale-image", type=float, default=1.0,
                        help="resize the mosaic first (objects this many times larger)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from skimage.transform import resize

    from segtool.model.precision import resolve_precision
    from segtool.pipeline.options import TileOptions
    from segtool.infer.predict import find_packaged_model, predict_image
    from segtool.infer.network import load_for_inference

    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    model = load_for_inference(find_packaged_model(), precision=precision)
    image = make_mosaic(args.data, args.side)[: args.side, : args.side]
    if args.scale_image != 1.0:
        side = round(args.side * args.scale_image)
        image = resize(image, (side, side), order=1, preserve_range=True).astype(np.float32)
    predict_image(image[:256, :256], model, tiling=TileOptions(scale=None))  # warm-up
    auto_times, fixed_times, auto_cpu, fixed_cpu = [], [], [], []
    chosen = None
    for _ in range(args.rounds):
        start, cpu = time.perf_counter(), time.process_time()
        result = predict_image(image, model, tiling=TileOptions(scale=None))
        auto_times.append(time.perf_counter() - start)
        auto_cpu.append(time.process_time() - cpu)
        chosen = result
        start, cpu = time.perf_counter(), time.process_time()
        predict_image(image, model, tiling=TileOptions(scale=result.scale))
        fixed_times.append(time.perf_counter() - start)
        fixed_cpu.append(time.process_time() - cpu)
    auto, fixed = statistics.median(auto_times), statistics.median(fixed_times)
    print(f"image {image.shape[0]}x{image.shape[1]}, threads {args.threads}, precision {precision}, rounds {args.rounds}")
    print(f"estimated diameter {chosen.size.diameter:.1f} px -> scale {chosen.scale:.3f}; "
          f"size stage {chosen.stage_seconds.get('size', 0.0):.2f} s")
    for step in chosen.size.ladder:
        print(f"  rung x{step[0]:g}: {step[1]} objects, median {step[2]:.1f} px (network), confidence {step[3]:.3f}")
    print(f"auto  median {auto:.2f} s  {[round(t, 2) for t in auto_times]}")
    print(f"fixed median {fixed:.2f} s  {[round(t, 2) for t in fixed_times]}  (--scale {chosen.scale:.3f})")
    print(f"ratio auto / fixed: {auto / fixed:.3f} wall, "
          f"{statistics.median(auto_cpu) / statistics.median(fixed_cpu):.3f} CPU time (process; robust to a busy host)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
