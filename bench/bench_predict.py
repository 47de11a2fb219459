"""Tiled U-Net inference of ``segtool predict`` versus MONAI's ``sliding_window_inference``.

Two parts:

**Throughput** (``--sizes``, default 2048 4096). For each image size both
implementations run the same default network (``UNetConfig()``: depth 4,
16 base channels at the time of writing, three classes; random weights with non-trivial BatchNorm
statistics, seeded; ``UNetConfig()`` defaults, whatever they are), the same tile size, overlap and batch size, Gaussian
blending in both, and produce the activated ``(3, H, W)`` maps:

* ``segtool``: :func:`segtool.pipeline.tiling.predict_tiled` with
  :func:`segtool.infer.network.prepare_for_inference` (BatchNorm folded,
  up-sampling reordered, channels-last) under ``torch.inference_mode()``.
* ``monai``: ``monai.inferers.sliding_window_inference`` on the plain eval
  network under ``torch.no_grad()``, as in MONAI's tutorials.

Each run is a fresh subprocess (so its peak RSS is its own); runs alternate
between the two implementations round by round so other load on the machine
hits both alike, and the median over rounds is reported. Both wall time and
process CPU time are recorded: with ``--threads 1`` CPU time is insensitive to
other processes sharing the cores. The maps of the two are compared (max and
mean absolute difference). ``segtool`` is also timed end to end
(:func:`segtool.infer.predict.predict_image`, normalisation to labels).

**Memory** (``--memory-size``, default 20000). A ``W x W`` uint16 image of
synthetic nuclei is written as a tiled zlib TIFF (so no page of it is mapped
into the process), then segmented band by band with
:func:`segtool.infer.bands.predict_file_in_bands` into a tiled BigTIFF, as
``segtool predict`` does for large images. Peak RSS is the process's
``ru_maxrss``; a sampler thread also records the peak of anonymous memory. The
network has the default architecture (``--memory-base-channels`` can shrink it
to make a full-size run affordable on a small machine: memory is dominated by
the band buffers, not by the network) with hand-set weights that make it a
pointwise nucleus detector, so post-processing sees realistic objects.
``--memory-height`` runs a strip of the full width instead: peak memory
depends on the width, not the height.

Run::

    python bench/bench_predict.py --threads 1 --rounds 3 --sizes 2048 4096 --memory-size 0
    python bench/bench_predict.py --sizes --memory-size 20000 --memory-height 2048
    python bench/bench_predict.py --sizes --memory-size 20000 --memory-base-channels 8

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------- shared set-up


def make_net(base_channels: int | None = None, *, seed: int = 0, detector: bool = False):
    """The default U-Net with seeded random weights, or hand-set 'intensity detector' weights."""
    import torch

    from segtool.model.config import UNetConfig
    from segtool.model.model import UNet

    torch.manual_seed(seed)
    config = UNetConfig(postprocess={"min_size": 10})
    if base_channels:
        config = UNetConfig(base_channels=base_channels, postprocess={"min_size": 10})
    net = UNet(config)
    with torch.no_grad():
        if not detector:
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
            net.head.weight.mul_(10.0)
        else:
            # Pass the intensity x along the top level only (relu(x), relu(-x)); background /
            # interior / boundary logits are linear in x, so nuclei (bright domes) come out as objects.
            for p in net.parameters():
                p.zero_()
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.fill_(1.0)
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
            first, last = net.encoders[0], net.decoders[-1].conv
            first[0].weight[0, 0, 1, 1], first[0].weight[1, 0, 1, 1] = 1.0, -1.0
            first[3].weight[0, 0, 1, 1] = first[3].weight[1, 1, 1, 1] = 1.0
            last[0].weight[0, 0, 1, 1] = last[0].weight[1, 1, 1, 1] = 1.0
            last[3].weight[0, 0, 1, 1] = last[3].weight[1, 1, 1, 1] = 1.0
            x = (1.0, -1.0)
            for channel, (gain, bias) in enumerate([(-12.0, 3.6), (12.0, -7.2), (0.0, 0.0)]):
                net.head.weight[channel, 0, 0, 0] = gain * x[0]
                net.head.weight[channel, 1, 0, 0] = gain * x[1]
                net.head.bias[channel] = bias
    return net.eval(), config


def nuclei_tile(shape, rng, *, radius=(6, 14), density=0.004):
    """uint16 tile with bright domes on a dim noisy background."""
    h, w = shape
    image = np.zeros(shape, np.float32)
    count = max(1, int(density * h * w / 10))
    yy, xx = np.ogrid[:h, :w]
    for r, c, rad in zip(rng.integers(0, h, count), rng.integers(0, w, count), rng.uniform(*radius, count)):
        y0, y1, x0, x1 = max(0, r - 16), min(h, r + 17), max(0, c - 16), min(w, c + 17)
        d2 = ((yy[y0:y1] - r) ** 2 + (xx[:, x0:x1] - c) ** 2) / rad**2
        image[y0:y1, x0:x1] = np.maximum(image[y0:y1, x0:x1], np.sqrt(np.clip(1 - d2, 0, None)))
    noisy = 200 + 3000 * image + rng.normal(0, 20, shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AnonSampler:
    """Samples RssAnon from /proc/self/status every ``interval`` seconds and keeps the peak."""

    def __init__(self, interval: float = 0.1) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                with open("/proc/self/status") as status:
                    for line in status:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]) / 1024)
            except OSError:
                return
            self._stop.wait(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- workers (subprocesses)


def worker_throughput(args) -> dict:
    import torch

    from segtool.normalize import normalize_percentile
    from segtool.model.heads import activate

    torch.set_num_threads(args.threads)
    net, config = make_net()
    image = nuclei_tile((args.size, args.size), np.random.default_rng(1))
    norm = normalize_percentile(image, config.norm_low, config.norm_high)
    rss_before = peak_rss_mb()

    if args.impl == "whole":
        with torch.no_grad():
            wall, cpu = time.perf_counter(), time.process_time()
            maps = activate(net(torch.from_numpy(norm)[None, None]), config.target)[0].numpy()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        extra = {}
    elif args.impl == "monai":
        from monai.inferers import sliding_window_inference

        def predictor(x):
            return activate(net(x), config.target)

        with torch.no_grad():
            predictor(torch.zeros(args.batch_size, 1, args.tile, args.tile))  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            maps = sliding_window_inference(
                torch.from_numpy(norm)[None, None],
                roi_size=(args.tile, args.tile),
                sw_batch_size=args.batch_size,
                predictor=predictor,
                overlap=args.overlap,
                mode="gaussian",
            )[0].numpy()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        extra = {}
    else:
        from segtool.model.modelfile import LoadedModel
        from segtool.pipeline.options import TileOptions
        from segtool.infer.network import make_predictor, prepare_for_inference
        from segtool.infer.predict import predict_image
        from segtool.pipeline.tiling import predict_tiled

        prepared = prepare_for_inference(net)
        predictor = make_predictor(prepared, config.target)
        predictor(np.zeros((args.batch_size, 1, args.tile, args.tile), np.float32))  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        maps = predict_tiled(norm, predictor, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, out_channels=3)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        extra = {}
        if args.end_to_end:
            extra["tiled_peak_rss_mb"] = peak_rss_mb()  # before the end-to-end run adds labels and watershed
            model = LoadedModel(net=prepared, config=config)
            start = time.perf_counter()
            result = predict_image(image, model, tiling=TileOptions(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size))
            extra = {"end_to_end_wall": time.perf_counter() - start, "objects": result.n_objects}
    if args.save:
        np.save(args.save, maps.astype(np.float32))
    return {
        "impl": args.impl,
        "size": args.size,
        "wall": wall,
        "cpu": cpu,
        "mpix_per_s": args.size**2 / 1e6 / wall,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        **extra,
    }


def worker_memory(args) -> dict:
    import tifffile
    import torch

    from segtool.pipeline.read import open_lazy
    from segtool.infer.bands import predict_file_in_bands
    from segtool.model.modelfile import load_model, save_model
    from segtool.pipeline.options import TileOptions
    from segtool.infer.network import prepare_for_inference

    torch.set_num_threads(args.threads)
    folder = Path(args.workdir)
    height = args.memory_height or args.memory_size
    width = args.memory_size
    source = folder / f"nuclei_{height}x{width}.tif"
    if not source.exists():
        tile = 512
        rng = np.random.default_rng(2)

        def tiles():
            for _ in range(0, height, tile):
                for _ in range(0, width, tile):
                    yield nuclei_tile((tile, tile), rng)

        tifffile.imwrite(source, tiles(), shape=(height, width), dtype=np.uint16, tile=(tile, tile),
                         compression="zlib", bigtiff=True)
    net, config = make_net(args.memory_base_channels, detector=True)
    model_path = folder / f"detector_{config.base_channels}.pt"
    save_model(model_path, net, config, metadata={"bench": True}, overwrite=True)
    del net
    model = load_model(model_path)
    model.net = prepare_for_inference(model.net)
    rss_before = peak_rss_mb()
    out = folder / "out_labels.tif"
    with AnonSampler() as sampler, open_lazy(source) as lazy:
        start = time.perf_counter()
        figures = predict_file_in_bands(lazy, model, out, overwrite=True,
                                        tiling=TileOptions(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size))
        wall = time.perf_counter() - start
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        written = {"bigtiff": tif.is_bigtiff, "tiled": page.is_tiled, "dtype": str(page.dtype), "shape": list(page.shape)}
    out.unlink()
    return {
        "shape": [height, width],
        "base_channels": config.base_channels,
        "wall": wall,
        "peak_rss_mb": peak_rss_mb(),
        "peak_anon_mb": sampler.peak,
        "rss_before_mb": rss_before,
        "input_mb": source.stat().st_size / 2**20,
        "figures": figures,
        "written": written,
    }


# --------------------------------------------------------------------------- driver


def run_worker(kind: str, args, **extra) -> dict:
    command = [sys.executable, str(HERE), "--worker", kind, "--threads", str(args.threads), "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--batch-size", str(args.batch_size)]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value not in (None, False):
            command += [flag, str(value)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reference-max", type=int, default=2048,
                        help="also run the network on the whole image (no tiles) for sizes up to this, as the reference")
    parser.add_argument("--memory-size", type=int, default=20000, help="0 skips the memory run")
    parser.add_argument("--memory-height", type=int, default=0, help="rows of the memory run (default: square)")
    parser.add_argument("--memory-base-channels", type=int, default=0, help="0: the default network's width")
    parser.add_argument("--workdir", default=None, help="folder for the large test image (kept for reuse)")
    # worker-only options
    parser.add_argument("--worker", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["segtool", "monai", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--end-to-end", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "throughput":
        print(json.dumps(worker_throughput(args)))
        return
    if args.worker == "memory":
        print(json.dumps(worker_memory(args)))
        return

    print(f"# bench_predict: threads={args.threads} tile={args.tile} overlap={args.overlap} batch={args.batch_size} "
          f"rounds={args.rounds}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            results: dict[str, list[dict]] = {"segtool": [], "monai": []}
            for round_ in range(args.rounds):
                order = ["segtool", "monai"] if round_ % 2 == 0 else ["monai", "segtool"]
                for impl in order:
                    last = round_ == args.rounds - 1
                    res = run_worker("throughput", args, impl=impl, size=size,
                                     save=f"{tmp}/{impl}.npy" if last else None,
                                     end_to_end=(impl == "segtool" and last))
                    results[impl].append(res)
                    print(f"  {size}² {impl:8s} round {round_ + 1}: wall {res['wall']:.1f} s, cpu {res['cpu']:.1f} s, "
                          f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
            ours, theirs = np.load(f"{tmp}/segtool.npy"), np.load(f"{tmp}/monai.npy")
            diff = np.abs(ours - theirs)
            row = {"size": size, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
            if size <= args.reference_max:
                run_worker("throughput", args, impl="whole", size=size, save=f"{tmp}/whole.npy")
                whole = np.load(f"{tmp}/whole.npy")
                inner = (slice(None), slice(64, -64), slice(64, -64))
                for impl, maps in (("segtool", ours), ("monai", theirs)):
                    d = np.abs(maps[inner] - whole[inner])
                    row[f"{impl}_vs_whole"] = (float(d.max()), float(d.mean()))
                del whole
            for impl, runs in results.items():
                row[impl] = {
                    "wall": statistics.median(r["wall"] for r in runs),
                    "cpu": statistics.median(r["cpu"] for r in runs),
                    "peak_rss_mb": max(r.get("tiled_peak_rss_mb", r["peak_rss_mb"]) for r in runs),
                    "rss_before_mb": statistics.median(r["rss_before_mb"] for r in runs),
                }
            row["segtool"]["end_to_end_wall"] = results["segtool"][-1].get("end_to_end_wall")
            row["segtool"]["objects"] = results["segtool"][-1].get("objects")
            row["segtool"]["end_to_end_peak_rss_mb"] = results["segtool"][-1]["peak_rss_mb"]
            rows.append(row)
            del ours, theirs, diff

    if rows:
        print()
        print("| image | impl | Mpx/s (wall) | wall s | CPU s | peak RSS MB | speed-up (wall / CPU) |")
        print("|---|---|---:|---:|---:|---:|---|")
        for row in rows:
            mpx = row["size"] ** 2 / 1e6
            for impl in ("segtool", "monai"):
                r = row[impl]
                speed = ""
                if impl == "segtool":
                    speed = f"{row['monai']['wall'] / r['wall']:.2f}x / {row['monai']['cpu'] / r['cpu']:.2f}x"
                print(f"| {row['size']}² | {impl} | {mpx / r['wall']:.3f} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                      f"{r['peak_rss_mb']:.0f} | {speed} |")
            print(f"|  | segtool vs monai maps | max {row['max_abs_diff']:.1e}, mean {row['mean_abs_diff']:.1e} | | | | |")
            for impl in ("segtool", "monai"):
                if f"{impl}_vs_whole" in row:
                    dmax, dmean = row[f"{impl}_vs_whole"]
                    print(f"|  | {impl} vs whole-image inference (64 px from the edge) | max {dmax:.1e}, mean {dmean:.1e} | | | | |")
            if row["segtool"].get("end_to_end_wall"):
                print(f"|  | segtool predict_image end to end (to labels) | {mpx / row['segtool']['end_to_end_wall']:.3f} | "
                      f"{row['segtool']['end_to_end_wall']:.1f} | | {row['segtool']['end_to_end_peak_rss_mb']:.0f} | |")

    if args.memory_size:
        workdir = args.workdir or tempfile.mkdtemp(prefix="bench_predict_")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        res = run_worker("memory", args, workdir=workdir, memory_size=args.memory_size,
                         memory_height=args.memory_height or None, memory_base_channels=args.memory_base_channels)
        print()
        print("| memory run | base channels | wall s | peak RSS MB | peak anon MB | RSS before MB | objects | tiles | bands | output |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        f, w = res["figures"], res["written"]
        print(f"| {res['shape'][0]} x {res['shape'][1]} uint16 ({res['input_mb']:.0f} MB zlib tiled TIFF) | {res['base_channels']} | "
              f"{res['wall']:.0f} | {res['peak_rss_mb']:.0f} | {res['peak_anon_mb']:.0f} | {res['rss_before_mb']:.0f} | "
              f"{f['objects']} | {f['tiles']} | {f['bands']} | {w['dtype']} {'tiled ' if w['tiled'] else ''}"
              f"{'BigTIFF' if w['bigtiff'] else 'TIFF'} |")


if __name__ == "__main__":
    main()
