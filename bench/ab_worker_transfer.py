"""How data workers hand batches back: through DataLoader, or into a shared-memory ring.

An A/B check behind :mod:`segtool.train.ring`. Four ways to get the same 60
batches (128 px, elastic, batch 8; 2 workers where there are workers),
interleaved round by round, median of the rounds:

* ``in-process``: ``iterate_batches(workers=0)``, no workers;
* ``tensors (shm)``: a DataLoader whose workers return tensors, which PyTorch
  moves to a new shared-memory segment per tensor and hands over with a
  hand-shake with the sending worker (what segtool did first);
* ``arrays (pipe)``: a DataLoader whose workers return NumPy arrays, pickled
  through their pipe (what segtool did next);
* ``ring (shm)``: ``iterate_batches(workers=2)``: workers write each batch
  into a slot of a shared-memory ring allocated once (what segtool does).

It prints CPU milliseconds per patch over all processes (this one and its
workers, start-up included), which other load on the machine changes
little, and patches per second, which it changes a lot.

Run::

    python bench/ab_worker_transfer.py --rounds 5

Data: the first 40 training images of ``/work/shared/data/dsb2018_fluo``
(synthetic disks if that folder is missing). Not run by pytest.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segtool.train.augment import AugmentOptions
from segtool.model.config import UNetConfig
from segtool.train.dataset import PatchSampler, prepare_samples
from segtool.train.loader import batch_generator, iterate_batches


class TensorBatches(torch.utils.data.Dataset):
    """Batch ``index`` as tensors (the DataLoader then passes them through shared memory)."""

    def __init__(self, sampler: PatchSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.batch(self.batch_size, rng=batch_generator(0, index))
        return torch.from_numpy(x), torch.from_numpy(y)


class ArrayBatches(TensorBatches):
    """Batch ``index`` as arrays (the DataLoader pickles them through the worker's pipe)."""

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sampler.batch(self.batch_size, rng=batch_generator(0, index))


def as_is(batch):
    return batch


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(samples, mode: str, batches: int, batch_size: int, patch_size: int) -> tuple[float, float]:
    sampler = PatchSampler(samples, patch_size=patch_size, rng=np.random.default_rng(0), augment=AugmentOptions(elastic=True))
    c0, t0 = cpu_seconds(), time.perf_counter()
    if mode in ("tensors (shm)", "arrays (pipe)"):
        dataset = (TensorBatches if mode == "tensors (shm)" else ArrayBatches)(sampler, batch_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=range(batches), num_workers=2, prefetch_factor=2, collate_fn=as_is
        )
        for _ in loader:
            pass
        del loader  # its workers end (and count among the finished children) before the clock stops
    else:
        workers = 0 if mode == "in-process" else 2
        for _ in iterate_batches(sampler, batch_size=batch_size, seed=0, start=0, stop=batches, workers=workers):
            pass
    patches = batches * batch_size
    return 1e3 * (cpu_seconds() - c0) / patches, patches / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import load_pairs

    samples = prepare_samples(load_pairs(40), UNetConfig(patch_size=args.patch_size))
    modes = ("in-process", "tensors (shm)", "arrays (pipe)", "ring (shm)")
    rows = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rows[mode].append(run(samples, mode, args.batches, args.batch_size, args.patch_size))
    print(f"{args.batches} batches of {args.batch_size} x {args.patch_size} px, elastic; median of {args.rounds} interleaved rounds")
    print()
    print("| how | CPU ms per patch, all processes | patches/s |")
    print("|---|---:|---:|")
    for mode in modes:
        cpu = statistics.median(r[0] for r in rows[mode])
        speed = statistics.median(r[1] for r in rows[mode])
        print(f"| {mode} | {cpu:.2f} | {speed:.0f} |")


if __name__ == "__main__":
    main()
