"""Peak memory of ``segtool predict`` on a Z stack as the stack gets deeper (2048 x 2048 planes).

Writes synthetic uint16 ImageJ stacks of 2048 x 2048 x N (N from ``--planes``),
runs ``segtool predict`` on each in a fresh process under ``/usr/bin/time -v``,
and prints its maximum resident set size, wall time and object count. With
``--z-mode stitch`` the planes are read, predicted, stitched and written one
at a time, so the peak should not grow with N.

Run::

    python bench/bench_volume_memory.py --planes 2 4 8 --z-mode stitch --threads 2

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from segtool.volume.synthetic import make_nuclei_stack


def write_stack(path: Path, planes: int, size: int) -> None:
    """A stack of ``planes`` planes built from 4-plane synthetic blocks (keeps the generator's memory small)."""
    blocks = []
    for start in range(0, planes, 4):
        image, _ = make_nuclei_stack((min(4, planes - start), size, size), z_spacing=2.0,
                                     n_nuclei=size * size // 1500, seed=start)
        blocks.append(image)
    tifffile.imwrite(path, np.concatenate(blocks), imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--z-mode", default="stitch")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"| stack | --z-mode | wall s | peak RSS MiB | objects |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for planes in args.planes:
            stack = Path(tmp) / f"stack{planes}.tif"
            write_stack(stack, planes, args.size)
            command = [sys.executable, "-m", "segtool", "predict", str(stack), "-o", str(Path(tmp) / f"out{planes}"),
                       "--z-mode", args.z_mode, "--json", "--quiet"]
            if args.threads:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(done.returncode)
            rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
            wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
            parts = [float(p) for p in wall.split(":")]
            seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
            record = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {args.size}x{args.size}x{planes} | {record['mode']} | {seconds:.0f} | {rss_kb / 1024:.0f} "
                  f"| {record['objects']} |", flush=True)


if __name__ == "__main__":
    main()
