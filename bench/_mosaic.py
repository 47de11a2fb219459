"""Large test images made of real ones: a mosaic of a split's images, for the prediction benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtool.io import read_image

#: Side of one mosaic cell; every image is cropped (or reflect-padded) to it.
CELL = 256


def make_mosaic(folder: Path, side: int, *, seed: int = 0) -> np.ndarray:
    """A ``side x side`` uint8 image tiled with 256 x 256 crops of the images in ``folder`` (shuffled, seeded)."""
    paths = sorted(Path(folder).glob("*.tif"))
    if not paths:
        raise SystemExit(f"{folder}: no .tif images")
    rng = np.random.default_rng(seed)
    crops = []
    for path in paths:
        data = read_image(path).data.astype(np.float32)
        if data.ndim == 3:
            data = data.mean(axis=0)
        pad = [(0, max(0, CELL - n)) for n in data.shape]
        crops.append(np.pad(data, pad, mode="reflect")[:CELL, :CELL])
    cells = -(-side // CELL)
    out = np.empty((cells * CELL, cells * CELL), np.float32)
    order = rng.permutation(cells * cells) % len(crops)
    for k, index in enumerate(order):
        y, x = divmod(k, cells)
        out[y * CELL : (y + 1) * CELL, x * CELL : (x + 1) * CELL] = crops[index]
    return np.clip(out[:side, :side], 0, 255).astype(np.uint8)
