"""Training batches, drawn in the training process or by data worker processes.

Patch sampling and augmentation (elastic deformation above all) run on the
CPU, one core per process. With ``workers=0`` they run in the training
process between optimiser steps; with ``workers >= 1`` that many worker
processes make them into shared memory (:mod:`segtool.train.ring`) while the
network trains on the batches already made.

Reproducibility
---------------
``workers=0`` draws every patch from the one seeded generator of the training
run, in order, as segtool did before worker processes existed (so older
recipes give the same weights). ``workers >= 1`` gives every batch a
generator of its own, seeded from the run's seed and the batch's number
(:func:`batch_generator`): which worker makes a batch, and how many workers
there are, then does not matter, so 1, 2 or 15 workers give the same
patches in the same order. The two schemes draw different (equally random)
patches, so ``0`` versus ``>= 1`` is recorded with a run and kept on resume.

On a CUDA device, batches come in page-locked (pinned) memory and are
copied with ``non_blocking=True``, so the copy to the GPU overlaps the CPU
work of the next step. Each worker assembles a whole batch (one array per
step, not one per patch), so the training process receives, pins and
copies one block per step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from segtool.errors import InputError
from segtool.train.dataset import PatchSampler
from segtool.train.ring import ring_batches

__all__ = ["auto_workers", "batch_generator", "iterate_batches", "resume_workers"]


def auto_workers(device: torch.device | str, *, cores: int | None = None) -> int:
    """The default number of data worker processes for training on ``device``.

    On a GPU (``cuda``, ``mps``) the network step takes little CPU, so all
    cores but one (which the training process keeps) prepare patches, at
    most 16. On the CPU the network needs the cores itself: none on 2 cores
    or fewer (workers would only take turns with the network), else a
    quarter of them.

    Parameters
    ----------
    device : torch.device or str
        The training device (already resolved, not ``auto``).
    cores : int, optional
        CPU cores this process may use. Default: those of its CPU affinity.

    Returns
    -------
    workers : int

    Examples
    --------
    >>> auto_workers("cpu", cores=2), auto_workers("cpu", cores=16), auto_workers("cuda", cores=16)
    (0, 4, 15)
    >>> auto_workers("cuda", cores=1)
    0
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    kind = torch.device(device).type
    if kind in ("cuda", "mps"):
        return max(0, min(cores - 1, 16))
    return 0 if cores <= 2 else cores // 4


def resume_workers(saved: int, requested: int) -> int:
    """The worker count for resuming a run that used ``saved`` workers.

    The scheme of random draws must stay the same (see the module notes): a
    run made in the training process (0) continues there; a run made with
    workers continues with ``requested`` of them, at least one.

    Examples
    --------
    >>> resume_workers(0, 4), resume_workers(2, 4), resume_workers(2, 0)
    (0, 4, 1)
    """
    return 0 if saved == 0 else max(1, requested)


def batch_generator(seed: int, index: int) -> np.random.Generator:
    """The random generator of batch number ``index`` (0-based, counted over the whole run).

    The ``index``-th child of ``numpy.random.SeedSequence(seed)``, so the
    batches' streams are independent of one another and of the run's
    generator ``numpy.random.default_rng(seed)``.

    Examples
    --------
    >>> a, b = batch_generator(0, 5).random(), batch_generator(0, 5).random()
    >>> a == b, a == batch_generator(0, 6).random()
    (True, False)
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


class _BatchInto:
    """Makes batch number ``k`` of a run into given arrays, in a worker process (picklable for spawn)."""

    def __init__(self, sampler: PatchSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __call__(self, number: int, x: np.ndarray, y: np.ndarray) -> None:
        self.sampler.batch(len(x), rng=batch_generator(self.seed, number), out=(x, y))


def iterate_batches(
    sampler: PatchSampler,
    *,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the training batches ``start`` to ``stop - 1`` of a run, in order.

    Parameters
    ----------
    sampler : PatchSampler
        Cuts and augments the patches. With ``workers=0`` its own generator
        supplies every draw (continue a run by restoring its state); with
        workers, each batch's generator comes from :func:`batch_generator`.
    batch_size : int
    seed : int
        The run's seed (used with ``workers >= 1``).
    start, stop : int
        Batch numbers counted over the whole run (the optimiser step count).
    workers : int, optional
        Worker processes; 0 makes the batches here, one at a time, when
        asked for.
    pin_memory : bool, optional
        Return page-locked CPU tensors, for ``non_blocking`` copies to a
        CUDA device.

    Yields
    ------
    x : (B, C, P, P) Tensor of float32
    y : (B, K, P, P) Tensor of float32
        With workers (and without ``pin_memory``) they are views of shared
        memory, valid until the next batch is asked for.

    Raises
    ------
    InputError
        If ``workers`` < 0 or ``start`` > ``stop``.
    SegtoolError
        If a worker process dies (killed, out of memory) while a batch is
        awaited.

    Notes
    -----
    Close the generator (or let it go) when stopping early: that ends the
    worker processes. Up to ``2 * workers`` batches are made ahead.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> from segtool.train.dataset import prepare_sample
    >>> s = prepare_sample(np.eye(8) * 9, np.eye(8, dtype=int), UNetConfig(depth=1, patch_size=4))
    >>> sampler = PatchSampler([s], patch_size=4, rng=np.random.default_rng(0))
    >>> [tuple(x.shape) for x, y in iterate_batches(sampler, batch_size=3, seed=0, start=0, stop=2)]
    [(3, 1, 4, 4), (3, 1, 4, 4)]
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an integer >= 0, got {workers!r}")
    if not 0 <= start <= stop:
        raise InputError(f"batch range must satisfy 0 <= start <= stop, got {start}, {stop}")
    if workers == 0:
        for _ in range(start, stop):
            x, y = (torch.from_numpy(a) for a in sampler.batch(batch_size))
            yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
        return
    if start == stop:
        return
    # batch ``start`` is made here: it fixes the shapes of the shared slots the workers fill
    first = sampler.batch(batch_size, rng=batch_generator(seed, start))
    for x, y in ring_batches(_BatchInto(sampler, seed), first, start=start, stop=stop, workers=workers):
        yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)


