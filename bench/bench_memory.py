"""Working memory per pixel of each command: the figures behind ``segtool.memory.WORKING_BYTES``.

Each measurement runs in a fresh process: import everything, read the image once
(so the reader's own buffers are counted already), note the peak RSS, run the
command on a synthetic N x N uint16 image of disks on noise with every extra
output on, and print the growth of the peak RSS per pixel next to the value the
memory guard assumes (the ratio must stay below 1).

Run (not by pytest; a few minutes on 2 cores)::

    python bench/bench_memory.py --size 3000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

COMMANDS = ("baseline", "baseline --split", "predict", "export", "measure", "evaluate")


def make_images(folder: Path, size: int) -> tuple[Path, Path]:
    """A uint16 image of bright disks on noise, and its labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (size, size)).astype(np.float32)
    labels = np.zeros((size, size), np.uint16)
    k = 1
    for cy in range(20, size - 20, 40):
        for cx in range(20, size - 20, 40):
            rr, cc = disk((cy, cx), 12)
            image[rr, cc] += 60
            labels[rr, cc] = k
            k += 1
    image_path, labels_path = folder / "img.tif", folder / "img_labels.tif"
    tifffile.imwrite(image_path, image.astype(np.uint16))
    tifffile.imwrite(labels_path, labels)
    return image_path, labels_path


def measure_one(command: str, image: Path, labels: Path, out: Path) -> float:
    """Peak-RSS growth in bytes per pixel of ``command`` (run in this process)."""
    from typer.testing import CliRunner

    import segtool.cli  # noqa: F401  (imports counted before the measurement)
    from segtool.cli.application import app
    from segtool.io import read_image

    args = {
        "baseline": ["baseline", str(image), "--save-background", "--save-corrected", "--save-overlay"],
        "baseline --split": ["baseline", str(image), "--split", "--save-background", "--save-corrected", "--save-overlay"],
        "predict": ["predict", str(image), "--no-bands", "--save-prob", "--save-overlay", "--threads", "2"],
        "export": ["export", str(labels), "-f", "labels,binary,png,imagej-roi,geojson,csv", "--image", str(image)],
        "measure": ["measure", str(labels), "--image", str(image)],
        "evaluate": ["evaluate", str(labels), str(labels), "--json"],
    }[command]
    if command != "evaluate":
        args += ["-o", str(out), "--overwrite", "--max-memory", "none"]
    if command == "predict":
        from segtool.infer.network import load_for_inference_cached

        load_for_inference_cached(Path(__file__).resolve().parents[1] / "segtool/models/nuclei.pt", device="cpu", threads=2,
                                  precision="auto")
    pixels = read_image(image).data.size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise RuntimeError(f"{command}: exit {result.exit_code}: {result.output[-500:]}")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (after - before) / pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3000, help="side of the synthetic image (predict uses 2/3 of it)")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help="comma-separated commands to measure (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one command in this process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder = Path(args.folder)
        print(json.dumps(measure_one(args.one, folder / "img.tif", folder / "img_labels.tif", folder / "out")))
        return
    from segtool.memory import WORKING_BYTES

    print("| command | image | measured bytes/pixel | guard assumes | ratio |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for command in [c.strip() for c in args.commands.split(",") if c.strip()]:
            size = args.size * 2 // 3 if command == "predict" else args.size
            folder = Path(tmp) / str(size)
            if not folder.exists():
                folder.mkdir()
                make_images(folder, size)
            run = subprocess.run([sys.executable, __file__, "--one", command, "--folder", str(folder)],
                                 capture_output=True, text=True, check=True)
            measured = json.loads(run.stdout.strip().splitlines()[-1])
            assumed = WORKING_BYTES[command]
            print(f"| {command} | {size}x{size} uint16 | {measured:.1f} | {assumed:.0f} | {measured / assumed:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
