"""Peak memory of ``segtool predict`` on a Z stack as the stack gets deeper (2048 x 2048 planes).

Writes synthetic uint16 ImageJ stacks of 2048 x 2048 x N (N from ``--planes``;
4-plane synthetic blocks repeated along z), runs ``segtool predict`` on each
in a fresh process under ``/usr/bin/time -v``, and prints its maximum resident
set size, wall time and object count. With ``--z-mode stitch`` the planes are
read, predicted, stitched and written one at a time, so the peak should not
grow with N.

``--pointwise-model`` swaps the shipped network for a tiny U-Net whose weights
make it a pointwise detector (foreground where the normalised intensity
exceeds 0.3): the whole pipeline (read, normalise, tile, network, objects,
stitch, write) runs on a deep stack in minutes instead of hours on a CPU,
with a network whose activations are far smaller than the real one's.

Run::

    python bench/bench_volume_memory.py --planes 2 4 --z-mode stitch
    python bench/bench_volume_memory.py --planes 16 128 --z-mode stitch --pointwise-model

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
    """A stack of ``planes`` planes: one 4-plane synthetic block repeated along z, written plane by plane."""
    block, _ = make_nuclei_stack((4, size, size), z_spacing=2.0, n_nuclei=size * size // 1500, seed=0)
    tifffile.imwrite(path, (block[z % 4] for z in range(planes)), shape=(planes, size, size), dtype=np.uint16,
                     imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})


def write_pointwise_model(path: Path) -> Path:
    """A depth-2, 4-channel U-Net (distance target) set to pass the intensity through: fg > 0.3, seeds > 0.55."""
    import torch

    from segtool.model.config import UNetConfig
    from segtool.model.model import UNet
    from segtool.model.modelfile import save_model

    config = UNetConfig(depth=2, base_channels=4, patch_size=256, target="distance", postprocess={"min_size": 5})
    net = UNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        first, last = net.encoders[0], net.decoders[-1].conv
        first[0].weight[0, 0, 1, 1], first[0].weight[1, 0, 1, 1] = 1.0, -1.0
        first[3].weight[0, 0, 1, 1], first[3].weight[1, 1, 1, 1] = 1.0, 1.0
        last[0].weight[0, 0, 1, 1], last[0].weight[1, 1, 1, 1] = 1.0, 1.0
        last[3].weight[0, 0, 1, 1], last[3].weight[1, 1, 1, 1] = 1.0, 1.0
        net.head.weight[0, 0], net.head.weight[0, 1], net.head.bias[0] = 15.0, -15.0, -4.5
        net.head.weight[1, 0], net.head.weight[1, 1], net.head.bias[1] = 15.0, -15.0, -8.25
    return save_model(path, net.eval(), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--z-mode", default="stitch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pointwise-model", action="store_true", help="a tiny pointwise U-Net instead of the shipped model")
    args = parser.parse_args()
    print(f"model: {'pointwise (tiny)' if args.pointwise_model else 'shipped nuclei.pt'}")
    print("| stack | --z-mode | wall s | peak RSS MiB | objects |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        model = write_pointwise_model(Path(tmp) / "pointwise.pt") if args.pointwise_model else None
        for planes in args.planes:
            stack = Path(tmp) / f"stack{planes}.tif"
            write_stack(stack, planes, args.size)
            command = [sys.executable, "-m", "segtool", "predict", str(stack), "-o", str(Path(tmp) / f"out{planes}"),
                       "--z-mode", args.z_mode, "--json", "--quiet"]
            if args.threads:
                command += ["--threads", str(args.threads)]
            if model is not None:
                command += ["-m", str(model)]
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
