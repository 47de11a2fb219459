"""Cost of elastic augmentation per training patch: segtool's elastic field against a 2-D spline zoom.

:func:`segtool.train.augment.elastic_field` up-samples the random control
points with two small matrix products (cubic spline up-sampling is
separable). The reference does the same up-sampling with one
``scipy.ndimage.zoom`` call on the 2-D grid, as segtool did before. Both are
timed alone and inside a whole elastic training patch
(:class:`segtool.train.dataset.PatchSampler`, the shipped model's recipe:
128 px, ``three_class_distance``), interleaved round by round, median of the
rounds; the two fields are also compared value by value.

Run::

    python bench/bench_augment.py
    python bench/bench_augment.py --patch-size 256 --rounds 7

Data: the first 40 training images of ``/work/shared/data/dsb2018_fluo``
(synthetic disks if that folder is missing). Not run by pytest.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from unittest import mock

import numpy as np

import segtool.train.augment as augment
from segtool.train.augment import AugmentOptions
from segtool.model.config import UNetConfig
from segtool.train.dataset import PatchSampler, prepare_samples


def zoom_field(shape: tuple[int, int], rng: np.random.Generator, *, alpha: float, spacing: int) -> np.ndarray:
    """The reference: the same control points up-sampled by one 2-D cubic spline zoom per axis."""
    from scipy import ndimage as ndi

    height, width = shape
    grid = (max(2, math.ceil(height / spacing) + 1), max(2, math.ceil(width / spacing) + 1))
    coarse = rng.normal(0.0, alpha, size=(2, *grid))
    zoom = (height / grid[0], width / grid[1])
    out = np.empty((2, height, width), np.float32)
    for axis in range(2):
        out[axis] = ndi.zoom(coarse[axis], zoom, order=3, mode="nearest", grid_mode=True)[:height, :width]
    return out


def time_fields(field, size: int, count: int) -> float:
    t0 = time.perf_counter()
    for seed in range(count):
        field((size, size), np.random.default_rng(seed), alpha=4.0, spacing=32)
    return (time.perf_counter() - t0) / count


def time_patches(samples, field, size: int, count: int) -> float:
    sampler = PatchSampler(samples, patch_size=size, rng=np.random.default_rng(0), augment=AugmentOptions(elastic=True))
    with mock.patch.object(augment, "elastic_field", field):
        t0 = time.perf_counter()
        for _ in range(count):
            sampler.sample()
        return (time.perf_counter() - t0) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--count", type=int, default=200, help="fields and patches per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import DATA, load_pairs

    samples = prepare_samples(load_pairs(40), UNetConfig(patch_size=args.patch_size, target="three_class_distance"))
    variants = {"2-D spline zoom (before)": zoom_field, "separable matrices (segtool)": augment.elastic_field}

    differing = total = 0
    for seed in range(50):
        a = zoom_field((args.patch_size, args.patch_size), np.random.default_rng(seed), alpha=4.0, spacing=32)
        b = augment.elastic_field((args.patch_size, args.patch_size), np.random.default_rng(seed), alpha=4.0, spacing=32)
        differing += int((a != b).sum())
        total += a.size

    fields = {name: [] for name in variants}
    patches = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, field in variants.items():
            fields[name].append(time_fields(field, args.patch_size, args.count))
            patches[name].append(time_patches(samples, field, args.patch_size, args.count))

    print(
        f"patch {args.patch_size}, elastic (alpha 4, spacing 32), three_class_distance; median of {args.rounds} "
        f"interleaved rounds x {args.count}; data: {'dsb2018_fluo/train' if DATA.is_dir() else 'synthetic disks'}"
    )
    print(f"fields compared: {differing} of {total} float32 values differ")
    print()
    print("| elastic field | field ms | whole patch ms | patches/s on one core |")
    print("|---|---:|---:|---:|")
    for name in variants:
        field_ms, patch_ms = 1e3 * statistics.median(fields[name]), 1e3 * statistics.median(patches[name])
        print(f"| {name} | {field_ms:.3f} | {patch_ms:.3f} | {1e3 / patch_ms:.0f} |")
    before, after = variants
    ratios = [a / b for a, b in zip(patches[before], patches[after])]
    print()
    print(f"whole elastic patch: {statistics.median(ratios):.2f}x faster (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
