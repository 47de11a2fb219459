"""Time the polynomial background fit and the whole baseline segmentation.

For each image size, a cheap float32 test image (smooth background + random
bright disks + Gaussian noise; its generation is not timed) is processed by

* ``copy``: one ``np.copy`` of the image, the unit of the ratios;
* ``fit``: ``fit_background(image)`` (degree 2, robust);
* ``naive fit``: least squares with the full pixels x 6 monomials float64
  design matrix (``np.linalg.lstsq``), the textbook reference; above
  ``--naive-max`` pixels it runs on every 2nd row and column and says so;
* ``baseline``: ``segment_baseline(image)`` with its defaults;
* ``label only``: ``scipy.ndimage.label`` of the final mask, for scale.

Each time is the best of ``--repeat`` runs. Targets: fit <= 3x copy, baseline
<= 10x copy.

Run by hand (not by pytest)::

    python bench/bench_baseline.py [--sizes 2048 4096 8192] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi

from segtool.background import fit_background
from segtool.baseline import segment_baseline


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth degree-2 background, disks (radius 6-14, ~20 % cover) 80 above it, noise sd 5."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1, 1, size, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, size, dtype=np.float32)[None, :]
    image = 100 + 50 * x + 30 * y * y + 20 * x * y
    count = int(0.2 * size * size / (np.pi * 10**2))
    yy, xx = np.mgrid[-14:15, -14:15]
    stamps = {r: (yy**2 + xx**2 <= r * r).astype(np.float32) * 80 for r in range(6, 15)}
    padded = np.zeros((size + 28, size + 28), dtype=np.float32)
    for cy, cx, r in zip(rng.integers(0, size, count), rng.integers(0, size, count), rng.integers(6, 15, count)):
        window = padded[cy : cy + 29, cx : cx + 29]
        np.maximum(window, stamps[int(r)], out=window)
    image = image + padded[14:-14, 14:-14]
    image += rng.normal(0, 5, size=(size, size)).astype(np.float32)
    return image.astype(np.float32)


def naive_fit(image: np.ndarray, degree: int = 2) -> np.ndarray:
    """Full design matrix least squares; returns the coefficients."""
    h, w = image.shape
    y = np.linspace(-1, 1, h)[:, None]
    x = np.linspace(-1, 1, w)[None, :]
    yy, xx = np.broadcast_arrays(y, x)
    design = np.stack([(yy**i * xx**j).ravel() for i in range(degree + 1) for j in range(degree + 1 - i)], axis=1)
    coef, *_ = np.linalg.lstsq(design, image.ravel().astype(np.float64), rcond=None)
    return coef


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_size(size: int, repeat: int, naive_max: int) -> tuple[tuple, str | None]:
    """Timings (seconds) for one image size, and a note if the naive fit was subsampled."""
    image = make_image(size)
    copy = best_of(lambda: np.copy(image), max(repeat, 5))
    fit = best_of(lambda: fit_background(image), repeat)
    note = None
    naive_image = image
    if image.size > naive_max:
        naive_image = image[::2, ::2]
        note = (
            f"{size}x{size}: naive fit on every 2nd row and column ({naive_image.size} px); the full "
            f"design matrix would take {image.size * 6 * 8 / 2**30:.1f} GiB"
        )
    naive = best_of(lambda: naive_fit(naive_image), 1)
    result = segment_baseline(image)
    whole = best_of(lambda: segment_baseline(image), repeat)
    mask = result.corrected > result.threshold
    label = best_of(lambda: ndi.label(mask, structure=np.ones((3, 3), dtype=bool)), repeat)
    return (size, copy, fit, naive, whole, label, int(result.labels.max())), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--naive-max", type=int, default=4096 * 4096, help="pixels above which the naive fit is subsampled"
    )
    args = parser.parse_args()

    rows, notes = [], []
    for size in args.sizes:
        row, note = time_size(size, args.repeat, args.naive_max)
        rows.append(row)
        if note:
            notes.append(note)

    print(f"\nsegtool.baseline timings (best of {args.repeat}; ratios to one np.copy of the same image)\n")
    print("| image | np.copy | fit_background | naive lstsq fit | segment_baseline | ndimage.label alone | objects |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, copy, fit, naive, whole, label, objects in rows:
        print(
            f"| {size}x{size} float32 | {copy * 1e3:.1f} ms | {fit * 1e3:.1f} ms ({fit / copy:.2f}x) "
            f"| {naive * 1e3:.0f} ms ({naive / copy:.0f}x) | {whole * 1e3:.0f} ms ({whole / copy:.1f}x) "
            f"| {label * 1e3:.0f} ms ({label / copy:.1f}x) | {objects} |"
        )
    print("\ntargets: fit_background <= 3x copy, segment_baseline <= 10x copy")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
