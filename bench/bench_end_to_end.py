"""The whole ``segtool predict`` process against the network alone and against MONAI, fairly (issue #40).

For each size (mosaics of real images, ``bench/_mosaic.py``) and round, each
measurement in a fresh process, the kinds interleaved so that other load on the
machine hits all alike:

* ``segtool``: the whole ``segtool predict MOSAIC.tif --json --threads T``
  process with default settings: wall time around the process (imports, model
  loading, reading, network, objects, writing) and its peak RSS.
* ``network``: the same network as ``segtool predict`` runs it (the same
  backend, precision and preparation) on the same tiles: the sum of the
  network calls of :func:`segtool.pipeline.tiling.predict_tiled` with the default
  tile plan, after one warm-up call. No imports, reading, blending or objects.
* ``monai``: MONAI ``sliding_window_inference`` as an expert would tune it:
  the fewest equal windows of at most segtool's tile side on each axis,
  overlapping by 64 px, constant blending, batch 1, channels-last, bfloat16
  autocast where the CPU has bf16 instructions, ``torch.inference_mode``; the
  network stage only, after a warm-up call.
* ``monai-patch``: MONAI at the model's patch size (128, overlap 0.25,
  Gaussian blending, batch 4, float32): the plain reference from MONAI's
  tutorials (skipped above ``--patch-max``, where it takes minutes).

Start-up figures (``--startup``): ``segtool --help``, ``segtool predict`` on
one 256^2 image and ``segtool baseline`` on a 4096^2 mosaic against a bare
read-Otsu-label-write process.

Every figure is the median of ``--rounds`` runs, printed with the load average
(``os.getloadavg``) seen at its runs, as the machine may be shared.

Run::

    python bench/bench_end_to_end.py --data ../shared/data/dsb2018_fluo/test/images --threads 2 --startup
    python bench/bench_end_to_end.py --data ... --sizes 2048,3000 --rounds 3

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import math
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
MODEL = ROOT / "segtool" / "models" / "nuclei.pt"
#: Overlap of the tuned MONAI windows, in pixels.
MONAI_OVERLAP = 64


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _timed_process(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, exit code (always 0: a failure stops the benchmark) and stdout of a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, 0, out


def _peak_rss(args: list[str]) -> int:
    """Peak RSS in bytes of a command, from /usr/bin/time -v when available (else 0)."""
    if not Path("/usr/bin/time").exists():
        return 0
    done = subprocess.run(["/usr/bin/time", "-v", *args], env=_env(), capture_output=True, text=True)
    for line in done.stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1]) * 1024
    return 0


def mosaic_file(folder: Path, data: Path, size: int) -> Path:
    import tifffile

    from _mosaic import make_mosaic

    path = folder / f"mosaic_{size}.tif"
    if not path.exists():
        tifffile.imwrite(path, make_mosaic(data, size))
    return path


def segtool_predict(path: Path, out: Path, threads: int) -> dict:
    args = [sys.executable, "-m", "segtool", "predict", str(path), "-o", str(out), "--overwrite", "--json",
            "--threads", str(threads), "-q"]
    load = os.getloadavg()[0]
    wall, _, stdout = _timed_process(args)
    record = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "load": load, "stages": record.get("stage_seconds", {}), "tiles": record.get("tiles")}


def run_worker(kind: str, path: Path, threads: int) -> dict:
    load = os.getloadavg()[0]
    _, _, stdout = _timed_process([sys.executable, str(HERE), "--worker", kind, "--image", str(path),
                                   "--threads", str(threads)])
    record = json.loads(stdout.strip().splitlines()[-1])
    record["load"] = load
    return record


def equal_windows(side: int, largest: int, overlap: int, align: int) -> int:
    """Window side of the fewest equal windows (multiple of ``align``, at most ``largest``) covering ``side``.

    Examples
    --------
    >>> equal_windows(3000, 1568, 64, 16), equal_windows(256, 1568, 64, 16), equal_windows(8192, 1568, 64, 16)
    (1536, 256, 1424)
    """
    count = 1 if side <= largest else math.ceil((side - overlap) / (largest - overlap))
    while True:
        window = align * math.ceil((side + (count - 1) * overlap) / count / align)
        if window <= largest:
            return window
        count += 1


def worker(kind: str, image_path: Path, threads: int) -> dict:
    """One measurement in this (fresh) process; prints nothing else on stdout."""
    import tifffile
    import torch

    torch.set_num_threads(threads)
    image = tifffile.imread(image_path)
    from segtool.pipeline.options import TileOptions, budget_tile
    from segtool.infer.network import network_device_type, network_precision
    from segtool.infer.onnxbackend import load_onnx_model, native_bf16_cpu, prefer_onnxruntime
    from segtool.infer.network import load_for_inference, make_predictor
    from segtool.infer.predict import normalize_for_model
    from segtool.pipeline.tiling import predict_tiled

    if kind == "network":
        model = None
        if prefer_onnxruntime(device="auto", precision="auto"):
            model = load_onnx_model(MODEL, threads=threads, torch_for_large=native_bf16_cpu())
        if model is None:
            model = load_for_inference(MODEL, device="cpu", threads=threads, precision="auto")
        normalized = normalize_for_model(image, model)
        net = model.net
        plan = TileOptions().plan(model.config, normalized.shape[1:], device_type=network_device_type(net),
                                  precision=network_precision(net))
        predictor = make_predictor(net, model.config.target)
        predictor(np.zeros((1, model.config.in_channels) + tuple(plan.tile), np.float32))  # warm-up
        spent = [0.0]

        def timed(batch):
            started = time.perf_counter()
            out = predictor(batch)
            spent[0] += time.perf_counter() - started
            return out

        predict_tiled(normalized, timed, out_channels=model.config.out_channels, **plan.tiling_options())
        backend = f"torch {network_precision(net)}"
        if getattr(net, "segtool_backend", None) == "onnxruntime":
            from segtool.infer.onnxbackend import LARGE_BATCH_PIXELS

            per_call = min(plan.batch_size, plan.n_tiles) * plan.tile[0] * plan.tile[1]  # what OnnxNet routes by
            large = net.large is not None and per_call >= LARGE_BATCH_PIXELS
            backend = "torch bf16" if large else "onnxruntime fp32"
        return {"wall": spent[0], "tiles": plan.n_tiles, "tile": list(plan.tile), "backend": backend}

    from monai.inferers import sliding_window_inference

    from segtool.model.heads import activate
    from segtool.model.modelfile import load_model
    from segtool.model.precision import autocast, bf16_supported

    model = load_model(MODEL, device="cpu")
    net = model.net.eval()
    config = model.config
    normalized = torch.from_numpy(normalize_for_model(image, model)[np.newaxis])
    side = max(image.shape)
    if kind == "monai":
        precision = "bf16" if bf16_supported(torch.device("cpu")) and native_bf16_cpu() else "fp32"
        largest = budget_tile(config, precision=precision)
        roi = equal_windows(side, largest, MONAI_OVERLAP, config.size_multiple)
        overlap = MONAI_OVERLAP / roi if side > roi else 0.0
        net = net.to(memory_format=torch.channels_last)
        options = {"roi_size": (roi, roi), "sw_batch_size": 1, "overlap": overlap, "mode": "constant"}
    else:
        precision, roi = "fp32", int(config.patch_size)
        options = {"roi_size": (roi, roi), "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"}

    def predictor(x):
        x = x.contiguous(memory_format=torch.channels_last) if kind == "monai" else x
        with autocast(precision, torch.device("cpu")):
            return activate(net(x).float(), config.target)

    with torch.inference_mode():
        sliding_window_inference(torch.zeros(1, config.in_channels, roi, roi), predictor=predictor, **options)
        started = time.perf_counter()
        sliding_window_inference(normalized, predictor=predictor, **options)
        wall = time.perf_counter() - started
    return {"wall": wall, "roi": roi, "overlap": options["overlap"], "precision": precision}


def startup(folder: Path, data: Path, threads: int, rounds: int) -> list[str]:
    """Rows for the start-up table: --help, predict on one 256^2 image, baseline 4096^2 against a bare process."""
    small = mosaic_file(folder, data, 256)
    large = mosaic_file(folder, data, 4096)
    bare = ("import sys, tifffile\nfrom scipy import ndimage\nfrom skimage.filters import threshold_otsu\n"
            "image = tifffile.imread(sys.argv[1])\nlabels, n = ndimage.label(image > threshold_otsu(image))\n"
            "tifffile.imwrite(sys.argv[2], labels.astype('uint16' if n < 65536 else 'uint32'))\n")
    commands = {
        "segtool --help": [sys.executable, "-m", "segtool", "--help"],
        "segtool predict, one 256² image": [sys.executable, "-m", "segtool", "predict", str(small), "-o",
                                            str(folder / "out_small"), "--overwrite", "-q", "--threads", str(threads)],
        "segtool baseline, 4096²": [sys.executable, "-m", "segtool", "baseline", str(large), "-o",
                                    str(folder / "out_base"), "--overwrite", "-q"],
        "bare read-Otsu-label-write, 4096²": [sys.executable, "-c", bare, str(large), str(folder / "bare.tif")],
    }
    subprocess.run(commands["segtool predict, one 256² image"], env=_env(), capture_output=True)  # ONNX copy, caches
    walls: dict[str, list[float]] = {name: [] for name in commands}
    loads: list[float] = []
    for _ in range(rounds):
        for name, args in commands.items():
            loads.append(os.getloadavg()[0])
            walls[name].append(_timed_process(args)[0])
    med = {name: statistics.median(values) for name, values in walls.items()}
    rows = [f"| {name} | {med[name]:.2f} | {', '.join(f'{v:.2f}' for v in walls[name])} |" for name in commands]
    ratio = med["segtool baseline, 4096²"] / med["bare read-Otsu-label-write, 4096²"]
    rows.append(f"| baseline / bare process | **{ratio:.2f}x** | |")
    rows.append(f"| load average during these runs | {min(loads):.1f}-{max(loads):.1f} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder of .tif images for the mosaics")
    parser.add_argument("--sizes", default="256,2048,3000,8192")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--patch-max", type=int, default=3000, help="largest size MONAI at the patch size runs on")
    parser.add_argument("--startup", action="store_true", help="also the start-up figures")
    parser.add_argument("--skip-sizes", action="store_true", help="only the start-up figures")
    parser.add_argument("--folder", type=Path, help="keep the mosaics and outputs here (default: a temporary one)")
    parser.add_argument("--worker", choices=["network", "monai", "monai-patch"], help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.image, args.threads)))
        return
    if args.data is None:
        parser.error("--data is required")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"host: {_cpu_name()}, {os.cpu_count()} cores, --threads {args.threads}; medians of {args.rounds}",
              flush=True)
        if args.startup:
            print("\n| start-up | median (s) | runs (s) |\n|---|---:|---|")
            print("\n".join(startup(folder, args.data, args.threads, args.rounds)), flush=True)
        if args.skip_sizes:
            return
        print("\n| image | segtool predict, whole process (s) | peak RSS | network alone, same tiles (s) | "
              "whole / network throughput | MONAI tuned (s) | segtool vs MONAI tuned | MONAI at patch size (s) | "
              "load |\n|---|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
        for size in [int(s) for s in args.sizes.split(",")]:
            path = mosaic_file(folder, args.data, size)
            out = folder / f"out_{size}"
            subprocess.run([sys.executable, "-m", "segtool", "predict", str(path), "-o", str(out), "--overwrite", "-q",
                            "--threads", str(args.threads)], env=_env(), capture_output=True)  # ONNX copy, caches
            kinds = ["segtool", "network", "monai"] + (["monai-patch"] if size <= args.patch_max else [])
            runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    runs[kind].append(segtool_predict(path, out, args.threads) if kind == "segtool"
                                      else run_worker(kind, path, args.threads))
            med = {kind: statistics.median(r["wall"] for r in runs[kind]) for kind in kinds}
            rss = _peak_rss([sys.executable, "-m", "segtool", "predict", str(path), "-o", str(out), "--overwrite", "-q",
                             "--threads", str(args.threads)])
            loads = [r["load"] for kind in kinds for r in runs[kind]]
            network, monai = runs["network"][-1], runs["monai"][-1]
            patch = f"{med['monai-patch']:.2f}" if "monai-patch" in med else "not run"
            print(f"| {size}² | {med['segtool']:.2f} | {rss / 2**30:.2f} GiB | {med['network']:.2f} "
                  f"({network['tiles']} x {network['tile'][0]}², {network['backend']}) | "
                  f"**{med['network'] / med['segtool']:.2f}** | {med['monai']:.2f} ({monai['roi']}² windows, "
                  f"{monai['precision']}) | **{med['monai'] / med['segtool']:.2f}x** | {patch} | "
                  f"{min(loads):.1f}-{max(loads):.1f} |", flush=True)
            print(json.dumps({"size": size, "runs": runs}), file=sys.stderr, flush=True)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
