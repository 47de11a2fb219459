"""The whole ``segtool predict`` process against the network alone: the honest numbers of issue #22.

For each size (mosaics of real images, ``bench/_mosaic.py``) and round, in
fresh processes, interleaved so other load on the machine hits all alike:

* ``segtool``: the whole ``segtool predict MOSAIC.tif --json --threads T``
  process with default settings (plus ``--extra`` flags), wall time around the
  process: imports, model loading, reading, network, objects, writing.
* ``monai``: MONAI's ``sliding_window_inference`` on the shipped network
  (plain eval network under ``torch.no_grad()``, as MONAI's tutorials run it),
  roi 128 (the model's patch size), overlap 0.25, Gaussian blending, batch 4,
  ``torch.set_num_threads(T)``: the network stage only, timed after a warm-up
  (no imports, no reading, no post-processing).
* ``prepared``: the network as ``segtool`` prepares it (BatchNorm folded,
  channels-last, ``--precision`` as given) on non-overlapping batches of
  4 x 256^2 tiles of the mosaic: the network's own throughput, no
  recomputation, no post-processing.

Ratios are of medians over rounds within this one run. With ``--stage-size``
one more ``segtool predict`` run on that size reports the stage times from
``--json`` and the ratio wall / max(network, post-processing).

Run::

    python bench/bench_end_to_end.py --data ../shared/data/dsb2018_fluo/test/images --threads 2
    python bench/bench_end_to_end.py --data ... --sizes 2048 --rounds 3 --stage-size 8192

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def mosaic_file(folder: Path, data: Path, size: int) -> Path:
    import tifffile

    from _mosaic import make_mosaic

    path = folder / f"mosaic_{size}.tif"
    if not path.exists():
        tifffile.imwrite(path, make_mosaic(data, size, seed=size))
    return path


def run_segtool(path: Path, out: Path, threads: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "segtool", "predict", str(path), "-o", str(out), "--overwrite", "--json",
               "--threads", str(threads), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "record": record}


def run_worker(kind: str, path: Path, threads: int, precision: str) -> dict:
    command = [sys.executable, str(HERE), "--worker", kind, "--image", str(path), "--threads", str(threads),
               "--precision", precision]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args) -> dict:
    import tifffile
    import torch

    from segtool.normalize import normalize_percentile
    from segtool.unet.heads import activate
    from segtool.unet.modelfile import load_model
    from segtool.unet.predict import find_packaged_model, make_predictor, prepare_for_inference

    torch.set_num_threads(args.threads)
    model = load_model(find_packaged_model(), device="cpu")
    config = model.config
    image = normalize_percentile(tifffile.imread(args.image), config.norm_low, config.norm_high)
    if args.worker == "monai":
        from monai.inferers import sliding_window_inference

        net = model.net.eval()
        roi = int(config.patch_size)

        def predictor(x):
            return activate(net(x), config.target)

        with torch.no_grad():
            predictor(torch.zeros(4, 1, roi, roi))  # warm-up
            start = time.perf_counter()
            sliding_window_inference(torch.from_numpy(image)[None, None], roi_size=(roi, roi), sw_batch_size=4,
                                     predictor=predictor, overlap=0.25, mode="gaussian")
            wall = time.perf_counter() - start
        return {"wall": wall, "pixels": image.size}
    prepared = prepare_for_inference(model.net, precision=args.precision)
    predictor = make_predictor(prepared, config.target)
    side = 256
    h, w = (n // side * side for n in image.shape)
    tiles = image[:h, :w].reshape(h // side, side, w // side, side).transpose(0, 2, 1, 3).reshape(-1, 1, side, side)
    predictor(np.ascontiguousarray(tiles[:4]))  # warm-up
    start = time.perf_counter()
    for first in range(0, len(tiles), 4):
        predictor(np.ascontiguousarray(tiles[first : first + 4]))
    wall = time.perf_counter() - start
    return {"wall": wall, "pixels": int(h * w)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder of test-split images for the mosaics")
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="of the prepared network (segtool's default: auto)")
    parser.add_argument("--extra", default="", help="extra flags for segtool predict, e.g. '--precision fp32'")
    parser.add_argument("--stage-size", type=int, default=0, help="also report stage times at this size (0: no)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep mosaics here (default: a temporary folder)")
    parser.add_argument("--worker", choices=["monai", "prepared"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.data is None:
        parser.error("--data is required")
    extra = args.extra.split()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# bench_end_to_end: threads={args.threads} rounds={args.rounds} segtool flags {extra or 'defaults'}; "
          f"prepared precision {args.precision}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    for size in args.sizes:
        path = mosaic_file(workdir, args.data, size)
        runs: dict[str, list[float]] = {"segtool": [], "monai": [], "prepared": []}
        records = []
        for round_ in range(args.rounds):
            kinds = ["segtool", "monai", "prepared"]
            for kind in kinds[round_ % 3 :] + kinds[: round_ % 3]:
                if kind == "segtool":
                    res = run_segtool(path, workdir / "out", args.threads, extra)
                    records.append(res["record"])
                    runs[kind].append(res["wall"])
                else:
                    res = run_worker(kind, path, args.threads, args.precision)
                    runs[kind].append(res["wall"] if kind == "monai" else res["pixels"] / res["wall"] / 1e6)
                print(f"  {size}^2 {kind:9s} round {round_ + 1}: "
                      + (f"{runs[kind][-1]:.2f} MPix/s" if kind == "prepared" else f"{runs[kind][-1]:.1f} s"),
                      flush=True)
        seg, monai, prepared = (statistics.median(runs[k]) for k in ("segtool", "monai", "prepared"))
        mpix = size * size / 1e6
        rows.append((size, seg, monai, prepared, mpix, records[-1]))
    if rows:
        print()
        print("| image | segtool predict, whole process (s) | MPix/s | MONAI network only (s) | MONAI / segtool "
              "| prepared network, 4 x 256² batches (MPix/s) | segtool / prepared | tiles | stage seconds (last round) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for size, seg, monai, prepared, mpix, record in rows:
            print(f"| {size}² | {seg:.1f} | {mpix / seg:.2f} | {monai:.1f} | **{monai / seg:.2f}x** | {prepared:.2f} | "
                  f"**{mpix / seg / prepared:.2f}x** | {record.get('tiles')} | {record.get('stage_seconds')} |")
    if args.stage_size:
        path = mosaic_file(workdir, args.data, args.stage_size)
        res = run_segtool(path, workdir / "out", args.threads, extra)
        record = res["record"]
        stages = record.get("stage_seconds", {})
        bound = max(stages.get("network", 0.0), stages.get("postprocess", 0.0))
        print()
        print(f"{args.stage_size}² stage times: process wall {res['wall']:.1f} s, item wall {record['seconds']:.1f} s, "
              f"stages {stages}, bands {record.get('bands')}, tiles {record.get('tiles')}, objects {record.get('objects')}")
        if bound:
            print(f"item wall / max(network, postprocess) = {record['seconds'] / bound:.3f}; "
                  f"process wall / max = {res['wall'] / bound:.3f}")


if __name__ == "__main__":
    main()
