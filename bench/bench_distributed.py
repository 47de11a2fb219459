"""Dask scale-out: the cost of running on a cluster, and big-image mode's memory.

Two parts, both run through the real command line (``python -m segtool``):

**Folder mode** (``--images``, default 200). A folder of synthetic 256 x 256
uint16 nuclei images is segmented three ways, end to end, each a fresh
process: in one process (``--jobs 1``), with the process pool (``--jobs 2``),
on Dask (``--cluster local:2``, which starts its own local cluster), and on an
already running 2-worker cluster (``--cluster tcp://...``, started by this
script, as on an HPC site where the scheduler outlives the command). The Dask
overhead is the ratio of the Dask runs to ``--jobs 2``: equal worker counts,
same per-image code. Runs alternate round by round so other load hits all alike; the median
wall time over ``--rounds`` is reported. ``--command predict`` runs the U-Net
instead of the baseline (per-image work ~30x larger, so fixed costs weigh less).
The outputs of the three are compared byte for byte.

**Big-image mode** (``--big-size``, default 16384). A ``W x W`` uint16 image
(synthetic nuclei tiled across it) is written as a tiled zlib TIFF, then
``segtool baseline --block-size B`` runs on a 2-worker local cluster the
script starts (so it can ask the workers for their peak memory afterwards:
``VmHWM`` from ``/proc/self/status``, i.e. Linux), for each ``--blocks`` size.
Reported: wall time, megapixels per second, peak RSS of each worker and of the
client process (the segtool command itself, from GNU ``/usr/bin/time``). For
reference the in-memory baseline (one process, no Dask) runs on the same file.
``--big-predict`` does the same for ``segtool predict`` (much slower).

**Scheduler round trip** (``--noop``, default 2000). That many no-op tasks
go through a 2-worker local cluster the way folder mode submits images (a
window of in-flight futures, results gathered as they complete): the time per
task is the fixed cost Dask adds to every image, whatever the image.

Run::

    python bench/bench_distributed.py --rounds 3 --big-size 0
    python bench/bench_distributed.py --images 0 --big-size 16384 --blocks 1024 2048 4096

Needs ``pip install -e '.[distributed]'``. Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEGTOOL = [sys.executable, "-m", "segtool"]


def _run(args: list[str]) -> tuple[float, int, str]:
    """Run segtool; return (wall seconds, peak RSS of that process in MB, stderr).

    The peak comes from GNU time (``/usr/bin/time -f %M``), per process: the
    rusage of children would report the largest child of the whole script.
    """
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *SEGTOOL, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"segtool {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    peak_kb = next(int(line.split("=")[1]) for line in reversed(proc.stderr.splitlines()) if line.startswith("maxrss_kb="))
    return seconds, peak_kb // 1024, proc.stderr


def make_folder(folder: Path, count: int) -> None:
    import tifffile

    from segtool.synthetic import make_nuclei_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = make_nuclei_image((256, 256), n_nuclei=25, seed=i, dtype="uint16")
        tifffile.imwrite(folder / f"img{i:04d}.tif", image)


def _same_outputs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def bench_folder(work: Path, count: int, rounds: int, command: str) -> dict:
    folder = work / "folder"
    make_folder(folder, count)
    extra = ["--threads", "1"] if command == "predict" else []
    from distributed import Client, LocalCluster

    # A cluster that is already running (as on an HPC site): the per-image cost of Dask without its start-up.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as running, Client(running):
        variants = {
            "jobs 1": ["--jobs", "1"],
            "jobs 2": ["--jobs", "2"],
            "cluster local:2": ["--cluster", "local:2"],
            "running cluster": ["--cluster", running.scheduler_address],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            for name, flags in variants.items():
                out = work / f"out_{name.replace(' ', '_').replace(':', '')}"
                shutil.rmtree(out, ignore_errors=True)
                seconds, _, _ = _run([command, str(folder), "-o", str(out), "-q", *extra, *flags])
                times[name].append(seconds)
                print(f"  round {r + 1} {name:16s} {seconds:7.2f} s", file=sys.stderr)
    outs = [work / f"out_{n.replace(' ', '_').replace(':', '')}" for n in variants]
    identical = all(_same_outputs(outs[0], other) for other in outs[1:])
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "command": command,
        "images": count,
        "rounds": rounds,
        "median_seconds": {k: round(v, 2) for k, v in median.items()},
        "images_per_second": {k: round(count / v, 1) for k, v in median.items()},
        "dask_over_pool": round(median["cluster local:2"] / median["jobs 2"], 3),
        "dask_over_one_process": round(median["cluster local:2"] / median["jobs 1"], 3),
        "running_cluster_over_pool": round(median["running cluster"] / median["jobs 2"], 3),
        "outputs_identical": identical,
    }


def make_big_tiff(path: Path, size: int) -> None:
    import tifffile

    from segtool.synthetic import make_nuclei_image

    tile, _ = make_nuclei_image((2048, 2048), n_nuclei=1500, seed=7, dtype="uint16", illumination="none")
    reps = -(-size // 2048)
    rows = np.tile(tile, (1, reps))[:, :size]

    def tiles():
        for band in range(0, size, 512):
            strip = rows[band % 2048 : band % 2048 + 512]  # 512 divides 2048: never wraps
            for x in range(0, size, 512):
                yield np.ascontiguousarray(strip[:, x : x + 512])

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint16, tile=(512, 512), compression="zlib", bigtiff=True)


def _worker_peaks(client) -> list[int]:
    def vmhwm() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return -1

    return sorted(client.run(vmhwm).values())


def bench_big(work: Path, size: int, blocks: list[int], command: str) -> list[dict]:
    from distributed import Client, LocalCluster

    image = work / f"big{size}.tif"
    if not image.exists():
        print(f"  writing {image} ...", file=sys.stderr)
        make_big_tiff(image, size)
    rows = []
    out = work / "big_out"
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, _ = _run([command, str(image), "-o", str(out / "memory"), "-q"])
    rows.append({"mode": "in memory (one process)" if command == "baseline" else "bands (one process)",
                 "block": None, "seconds": round(seconds, 1), "mpix_per_s": round(size * size / 1e6 / seconds, 1),
                 "client_peak_mb": peak, "worker_peak_mb": None})
    for block in blocks:
        # A fresh cluster per block size, so each worker's peak is this run's.
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            target = out / f"block{block}"
            seconds, peak, _ = _run([command, str(image), "-o", str(target), "-q", "--block-size", str(block),
                                     "--cluster", cluster.scheduler_address])
            workers = _worker_peaks(client)
        rows.append({"mode": "--block-size", "block": block, "seconds": round(seconds, 1),
                     "mpix_per_s": round(size * size / 1e6 / seconds, 1), "client_peak_mb": peak,
                     "worker_peak_mb": workers})
        print(f"  block {block}: {seconds:.1f} s, workers {workers} MB, client {peak} MB", file=sys.stderr)
    return rows


def _noop(x):
    return x


def bench_noop(count: int, in_flight: int = 8) -> dict:
    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.submit(_noop, -1).result()  # warm up: the workers import the function's module
        start = time.perf_counter()
        pending = iter(range(count))
        window = as_completed()
        for i in range(in_flight):
            window.add(client.submit(_noop, next(pending), pure=False))
        done = 0
        for future in window:
            future.result()
            done += 1
            nxt = next(pending, None)
            if nxt is not None:
                window.add(client.submit(_noop, nxt, pure=False))
        seconds = time.perf_counter() - start
    return {"noop_tasks": count, "in_flight": in_flight, "seconds": round(seconds, 3), "ms_per_task": round(1000 * seconds / count, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="folder size (0: skip folder mode)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--command", choices=["baseline", "predict"], default="baseline")
    parser.add_argument("--big-size", type=int, default=16384, help="big image side (0: skip)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--big-predict", action="store_true", help="big-image mode with predict instead of baseline")
    parser.add_argument("--noop", type=int, default=2000, help="no-op tasks for the round-trip cost (0: skip)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="segtool-bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count()}
    try:
        if args.noop:
            # 8 in flight is what folder mode keeps on 2 single-thread workers (4 per thread).
            report["noop"] = [bench_noop(args.noop, window) for window in (8, 32)]
            for row in report["noop"]:
                print(json.dumps(row), flush=True)
        if args.images:
            report["folder"] = bench_folder(work, args.images, args.rounds, args.command)
            print(json.dumps(report["folder"]), flush=True)
        if args.big_size:
            report["big"] = bench_big(work, args.big_size, args.blocks, "predict" if args.big_predict else "baseline")
            for row in report["big"]:
                print(json.dumps(row), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
