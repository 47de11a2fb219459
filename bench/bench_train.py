"""Training throughput of ``segtool train`` versus a plain PyTorch loop, on this CPU.

Three measurements, interleaved round by round so that other load on the
machine hits all of them alike (the median over rounds is reported):

* ``plain loop``: the same U-Net, loss and optimiser on one pre-made batch of
  random tensors: forward, backward and optimiser step timed separately. This
  is the compute-only ceiling.
* ``segtool train loop``: :func:`segtool.train.loop.train_model` for one epoch
  of ``--steps`` steps on real images (patch sampling biased to foreground,
  augmentation, the same network and loss), no validation. Its own timer
  splits data time (sampling + augmentation + tensor conversion) from the rest.
* ``sampling only``: :class:`segtool.train.dataset.PatchSampler` alone, to show
  what a DataLoader with worker processes could at best hide.

``--precisions fp32 bf16`` runs the two loops at each precision (bfloat16
autocast with channels-last tensors, as ``segtool train --precision bf16``),
interleaved too, and prints the bf16 / fp32 throughput ratio of each loop.

``--workers 0 2`` runs segtool's loop once per data worker count (as
``segtool train --workers N``), interleaved too, and prints each count's
throughput against the first. It adds a fourth loop, ``data pipeline``:
:func:`segtool.train.loader.iterate_batches` (the batches ``train_model``
gets, made in the process or by workers) feeding a stand-in network of one
1x1 convolution with a mean-squared loss, so that patch sampling and
augmentation, not the network, bound it: what workers can win at most.
``--stand-in`` also swaps the U-Net of the other loops for a tiny one
(depth 1, 2 base channels). As a control, the same sampling also runs in N
plain forked processes (no DataLoader, no network) against one: the
parallel speed-up the machine itself allowed in those rounds, which other
load on a shared machine can take away.

Run::

    python bench/bench_train.py                       # default network, 256 px patches
    python bench/bench_train.py --base-channels 32    # compare widths
    python bench/bench_train.py --patch-size 128 --batch-size 32
    python bench/bench_train.py --patch-size 128 --precisions fp32 bf16 --elastic
    python bench/bench_train.py --stand-in --patch-size 128 --elastic --workers 0 2 --steps 40 --rounds 5

Data: the first ``--images`` training images of ``/work/shared/data/dsb2018_fluo``
(synthetic disks if that folder is missing). Not run by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segtool.train.augment import AugmentOptions
from segtool.model.config import UNetConfig
from segtool.train.dataset import PatchSampler, prepare_samples
from segtool.train.loader import iterate_batches
from segtool.model.model import UNet
from segtool.model.precision import autocast
from segtool.train.targets import target_loss
from segtool.train.options import TrainOptions
from segtool.train.loop import train_model

DATA = Path("/work/shared/data/dsb2018_fluo/train")


def load_pairs(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if DATA.is_dir():
        import tifffile

        paths = sorted((DATA / "images").glob("*.tif"))[:count]
        return [(tifffile.imread(p), tifffile.imread(DATA / "masks" / p.name)) for p in paths]
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(count):
        labels = np.zeros((256, 256), np.uint16)
        for k in range(1, 30):
            labels[disk(tuple(rng.integers(10, 246, 2)), int(rng.integers(5, 12)), shape=labels.shape)] = k
        pairs.append((((labels > 0) * 120 + rng.normal(20, 8, labels.shape)).clip(0, 255).astype(np.uint8), labels))
    return pairs


def plain_round(config: UNetConfig, options: TrainOptions, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    layout = torch.channels_last if options.precision == "bf16" else torch.contiguous_format
    net = UNet(config).train().to(memory_format=layout)
    optimizer = torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    size = config.patch_size
    x = torch.rand(options.batch_size, config.in_channels, size, size).contiguous(memory_format=layout)
    y = torch.randint(0, 3, (options.batch_size, 1, size, size)).float()
    if config.target != "three_class":  # the second target plane: a distance in [0, 1]
        y = torch.cat([y, torch.rand_like(y)], dim=1)
    weights = torch.tensor([0.5, 1.0, 2.0])
    cpu = torch.device("cpu")
    forward = backward = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast(options.precision, cpu):
            logits = net(x)
        loss = target_loss(logits.float(), y, config.target, weights=weights)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        forward += t1 - t0
        backward += t2 - t1
    patches = steps * options.batch_size
    return {"patches_s": patches / (forward + backward), "forward_s": forward / steps, "backward_s": backward / steps}


def segtool_round(pairs, config: UNetConfig, options: TrainOptions, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        result = train_model(pairs, [], config, options=options, checkpoint_dir=folder)
    report = result.history[0]
    return {
        "patches_s": report.patches / report.train_seconds,
        "step_s": report.train_seconds / steps,
        "data_s": report.data_seconds / steps,
    }


def pipeline_round(samples, config: UNetConfig, options: TrainOptions, steps: int) -> dict[str, float]:
    """Batches from iterate_batches into a stand-in network (one 1x1 convolution, MSE): data-bound by design."""
    sampler = PatchSampler(samples, patch_size=config.patch_size, rng=np.random.default_rng(0), augment=options.augment)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(config.in_channels, config.out_channels, 1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    own0, finished0 = _cpu_seconds()
    t0 = time.perf_counter()
    batches = iterate_batches(sampler, batch_size=options.batch_size, seed=0, start=0, stop=steps + 1, workers=options.workers)
    for index, (x, y) in enumerate(batches):
        if index == 0:
            # the first batch pays the workers' start-up, once per training run: timed apart
            t1 = time.perf_counter()
            own1, _ = _cpu_seconds()
            live1 = _live_children_cpu_seconds()
        loss = torch.nn.functional.mse_loss(net(x), y[:, :1].expand(-1, config.out_channels, -1, -1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - t1
    # the generator has ended and joined its workers, so their whole CPU time is among the finished children now
    own2, finished2 = _cpu_seconds()
    steady = (own2 - own1) + (finished2 - finished0 - live1)
    return {"patches_s": steps * options.batch_size / elapsed, "first_s": t1 - t0, "cpu_ms": 1e3 * steady / (steps * options.batch_size)}


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (busy neighbours change wall time, not these)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _live_children_cpu_seconds() -> float:
    import psutil

    return sum(sum(c.cpu_times()[:2]) for c in psutil.Process().children(recursive=True))


def _sample_batches(sampler: PatchSampler, batch_size: int, count: int) -> None:
    for _ in range(count):
        sampler.batch(batch_size)


def parallel_round(samples, config: UNetConfig, options: TrainOptions, steps: int, processes: int) -> dict[str, float]:
    """What the machine gives at most: ``processes`` plain forked processes sharing the sampling, no DataLoader."""
    import multiprocessing

    sampler = PatchSampler(samples, patch_size=config.patch_size, rng=np.random.default_rng(0), augment=options.augment)
    context = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    children = [
        context.Process(target=_sample_batches, args=(sampler, options.batch_size, steps // processes))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()
    elapsed = time.perf_counter() - t0
    return {"patches_s": processes * (steps // processes) * options.batch_size / elapsed}


def sampling_round(samples, config: UNetConfig, options: TrainOptions, steps: int) -> dict[str, float]:
    sampler = PatchSampler(samples, patch_size=config.patch_size, rng=np.random.default_rng(0), augment=options.augment)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = sampler.batch(options.batch_size)
        torch.from_numpy(x), torch.from_numpy(y)
    elapsed = time.perf_counter() - t0
    return {"patches_s": steps * options.batch_size / elapsed, "batch_s": elapsed / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target", default="three_class")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per round and loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    parser.add_argument("--workers", nargs="+", type=int, default=[0], help="data worker counts to compare (segtool's loop)")
    parser.add_argument("--stand-in", action="store_true", help="a tiny network (depth 1, 2 channels): data preparation bounds the loop")
    args = parser.parse_args()
    if args.stand_in:
        args.depth, args.base_channels = 1, 2

    torch.set_num_threads(args.threads)
    config = UNetConfig(depth=args.depth, base_channels=args.base_channels, patch_size=args.patch_size, target=args.target)
    options = TrainOptions(
        epochs=1,
        batch_size=args.batch_size,
        patches_per_epoch=args.steps * args.batch_size,
        device="cpu",
        warmup_epochs=0,
        augment=AugmentOptions(elastic=args.elastic),
    )
    by_precision = {p: TrainOptions(**{**options.to_dict(), "precision": p}) for p in args.precisions}
    pairs = load_pairs(args.images)
    samples = prepare_samples(pairs, config)
    params = sum(p.numel() for p in UNet(config).parameters())

    def with_workers(opts: TrainOptions, workers: int) -> TrainOptions:
        return TrainOptions(**{**opts.to_dict(), "workers": workers})

    # warm-up (first calls allocate and pick kernels)
    for opts in by_precision.values():
        plain_round(config, opts, 1)
        for workers in args.workers:
            segtool_round(pairs, config, with_workers(TrainOptions(**{**opts.to_dict(), "patches_per_epoch": args.batch_size}), workers), 1)

    plain = {p: [] for p in by_precision}
    ours = {p: [] for p in by_precision}
    by_workers = {(p, w): [] for p in by_precision for w in args.workers}
    pipeline = {w: [] for w in args.workers}
    ceiling = {w: [] for w in args.workers if w > 0}
    sampling = []
    for _ in range(args.rounds):
        for precision, opts in by_precision.items():
            plain[precision].append(plain_round(config, opts, args.steps))
            for workers in args.workers:
                row = segtool_round(pairs, config, with_workers(opts, workers), args.steps)
                by_workers[precision, workers].append(row)
            ours[precision] = by_workers[precision, args.workers[0]]
        if len(args.workers) > 1:
            for workers in args.workers:
                pipeline[workers].append(pipeline_round(samples, config, with_workers(options, workers), args.steps))
                if workers > 0:
                    ceiling[workers].append(parallel_round(samples, config, options, args.steps, workers))
        sampling.append(sampling_round(samples, config, options, args.steps))

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(
        f"U-Net depth {args.depth}, {args.base_channels} base channels ({params:,} parameters), target {args.target}, "
        f"patch {args.patch_size}, batch {args.batch_size}, {args.threads} threads, {torch.__version__}; "
        f"median of {args.rounds} rounds x {args.steps} steps; data: {args.images} images from "
        f"{'dsb2018_fluo/train' if DATA.is_dir() else 'synthetic disks'}"
    )
    print()
    print("| loop | patches/s | forward s/step | backward+step s/step | data s/step |")
    print("|---|---:|---:|---:|---:|")
    for precision in by_precision:
        p = plain[precision]
        print(f"| plain PyTorch (random tensors), {precision} | {med(p, 'patches_s'):.2f} | {med(p, 'forward_s'):.3f} | {med(p, 'backward_s'):.3f} | - |")
        for workers in args.workers:
            o = by_workers[precision, workers]
            print(f"| segtool train_model, {precision}, {workers} workers | {med(o, 'patches_s'):.2f} | - | - | {med(o, 'data_s'):.4f} |")
    if len(args.workers) > 1:
        for workers in args.workers:
            rows = pipeline[workers]
            print(
                f"| data pipeline + stand-in 1x1 conv, {workers} workers (first batch {med(rows, 'first_s'):.2f} s, "
                f"{med(rows, 'cpu_ms'):.2f} CPU ms per patch in all processes) | {med(rows, 'patches_s'):.1f} | - | - | - |"
            )
        for workers, rows in ceiling.items():
            print(f"| sampling in {workers} plain processes (no DataLoader, no network) | {med(rows, 'patches_s'):.1f} | - | - | - |")
    print(f"| sampling + augmentation only | {med(sampling, 'patches_s'):.1f} | - | - | {med(sampling, 'batch_s'):.4f} |")
    print()
    for precision in by_precision:
        o = ours[precision]
        ratio = med(o, "patches_s") / med(plain[precision], "patches_s")
        share = med(o, "data_s") / med(o, "step_s")
        print(f"{precision}: segtool / plain = {ratio:.3f}; data loading is {100 * share:.1f} % of a segtool step")
    def worker_ratios(label: str, rows: dict[int, list[dict[str, float]]]) -> None:
        first = args.workers[0]
        for workers in args.workers[1:]:
            # per round, then the median: both counts of a round ran under the same load
            ratios = [a["patches_s"] / b["patches_s"] for a, b in zip(rows[workers], rows[first])]
            print(
                f"{label}: {workers} workers / {first} workers throughput: {statistics.median(ratios):.2f}x "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )

    if len(args.workers) > 1:
        worker_ratios("data pipeline + stand-in network", pipeline)
        for workers in args.workers[1:]:
            # what the workers cost on top: on an idle machine with a core per worker, the speed-up is about
            # workers / (1 + overhead) at best
            ratios = [a["cpu_ms"] / b["cpu_ms"] for a, b in zip(pipeline[workers], pipeline[args.workers[0]])]
            print(
                f"CPU time per patch, all processes: {workers} workers / {args.workers[0]} workers: "
                f"{statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        for workers, rows in ceiling.items():
            # the parallel speed-up the machine allowed in the same rounds, whatever else ran on it
            ratios = [a["patches_s"] / b["patches_s"] for a, b in zip(rows, sampling)]
            print(
                f"machine's ceiling: sampling in {workers} processes / in 1: {statistics.median(ratios):.2f}x "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        for precision in by_precision:
            worker_ratios(f"segtool train_model, {precision}", {w: by_workers[precision, w] for w in args.workers})
    if {"fp32", "bf16"} <= set(by_precision):
        speedups = [med(rows["bf16"], "patches_s") / med(rows["fp32"], "patches_s") for rows in (plain, ours)]
        print(f"bf16 / fp32 throughput: plain loop {speedups[0]:.2f}x, segtool train_model {speedups[1]:.2f}x")


if __name__ == "__main__":
    main()
