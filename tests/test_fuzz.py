"""Mutated TIFFs: every command either succeeds or fails with a clean error, leaving no file behind.

Valid files from sample_data are damaged a few hundred times with a fixed seed
(bit flips, truncations, rewritten header fields). Reading them and running the
baseline on them must end in a result or a SegtoolError, never another
exception, and a failed input must not leave any file in the output folder.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from segtool.cli.baseline import BaselineTask
from segtool.errors import SegtoolError
from segtool.io import read_labels

N_MUTANTS = 240


def _mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(raw)
    kind = rng.integers(4)
    if kind == 0:  # bit flips, mostly in the header and first IFD where they do the most damage
        for _ in range(int(rng.integers(1, 8))):
            limit = len(data) if rng.random() < 0.3 else min(len(data), 512)
            pos = int(rng.integers(limit))
            data[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncation
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 2:  # rewrite one IFD entry's value (width, height, offsets, counts, bits...)
        byteorder = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack(byteorder + "I", bytes(data[4:8]))
        if ifd + 2 <= len(data):
            (count,) = struct.unpack(byteorder + "H", bytes(data[ifd : ifd + 2]))
            entry = ifd + 2 + 12 * int(rng.integers(max(count, 1)))
            if entry + 12 <= len(data):
                value = int(rng.choice([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(2**32))]))
                data[entry + 8 : entry + 12] = struct.pack(byteorder + "I", value)
    else:  # overwrite a random run with random bytes
        start = int(rng.integers(len(data)))
        length = int(rng.integers(1, 64))
        data[start : start + length] = rng.integers(0, 256, size=len(data[start : start + length]), dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="module")
def sources() -> list[bytes]:
    root = Path(__file__).resolve().parents[1] / "sample_data"
    files = sorted((root / "images").glob("*.tif"))[:2] + sorted((root / "masks").glob("*.tif"))[:1]
    return [f.read_bytes() for f in files]


def test_mutated_tiffs_fail_cleanly(tmp_path, sources):
    rng = np.random.default_rng(20261123)
    out = tmp_path / "out"
    task = BaselineTask(
        output_dir=out, overwrite=True, degree=2, robust=True, polarity="bright", threshold="otsu", min_size=20,
        fill_holes=False, smooth=0.0, split=False, save_background=False, save_corrected=False, save_overlay=True,
        channel=None, plane=None,
    )
    outcomes = {"ok": 0, "error": 0}
    for i in range(N_MUTANTS):
        source = sources[i % len(sources)]
        path = tmp_path / f"m{i:04d}.tif"
        path.write_bytes(_mutate(source, rng))
        try:
            task.run(path)
            outcomes["ok"] += 1
            assert task.planned_outputs(path)["labels"].exists()
        except SegtoolError as err:
            outcomes["error"] += 1
            message = str(err)
            assert message and "\n" not in message.strip()
            leftovers = [p for p in out.glob(f"m{i:04d}*")] if out.exists() else []
            assert leftovers == [], f"failed input left files behind: {leftovers}"
        try:
            read_labels(path)
        except SegtoolError:
            pass
        path.unlink()
    assert not [p for p in out.rglob("*.part")] if out.exists() else True
    # The mutations must really exercise both paths.
    assert outcomes["error"] > N_MUTANTS // 10 and outcomes["ok"] > N_MUTANTS // 10, outcomes
