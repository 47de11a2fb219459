"""Training batches, drawn in the training process or by data worker processes.

Patch sampling and augmentation (elastic deformation above all) run on the
CPU, one core per process. With ``workers=0`` they run in the training
process between optimiser steps; with ``workers >= 1`` a
:class:`torch.utils.data.DataLoader` runs them in that many worker processes
while the network trains on the batches already made.

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
import signal
from collections.abc import Iterator

import numpy as np
import torch

from segtool.errors import InputError, SegtoolError, first_line
from segtool.unet.dataset import PatchSampler

__all__ = ["auto_workers", "batch_generator", "iterate_batches", "resume_workers", "worker_failure"]

# how many batches each worker keeps ready (DataLoader's prefetch_factor): enough to ride out one slow batch,
# few enough that memory stays small and an early stop wastes little work
_PREFETCH = 2


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


class _Batches(torch.utils.data.Dataset):
    """Batch number ``index`` of a run, made by whichever worker gets it."""

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sampler.batch(self.batch_size, rng=batch_generator(self.seed, index))


def _as_is(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    # Arrays travel back pickled through the worker's pipe. Tensors would travel in shared memory, but each one
    # needs a new shared segment and a hand-shake with the worker that made it. bench/ab_worker_transfer.py
    # (2 workers, 128 px elastic batches of 8, busy 2-core host): 1.97 CPU ms per patch over all processes as
    # tensors, 1.88 as arrays, 1.28 without workers; a first run of the same comparison 1.89 / 1.62 / 1.24.
    return batch


def _ignore_interrupt(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group. The training process handles it (finish the step,
    # write last.pt); a worker that died of it would leave that step without its batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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

    Raises
    ------
    InputError
        If ``workers`` < 0 or ``start`` > ``stop``.
    SegtoolError
        If a worker process dies (killed, out of memory) while a batch is
        awaited (see :func:`worker_failure` for the other moments).

    Notes
    -----
    Close the generator (or let it go) when stopping early: that ends the
    worker processes. Up to ``2 * workers`` batches are made ahead.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> from segtool.unet.dataset import prepare_sample
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
    loader = torch.utils.data.DataLoader(
        _Batches(sampler, batch_size, seed),
        batch_size=None,  # the dataset's items are whole batches
        sampler=range(start, stop),
        num_workers=workers,
        collate_fn=_as_is,
        worker_init_fn=_ignore_interrupt,
        prefetch_factor=_PREFETCH,
    )
    iterator = iter(loader)
    try:
        while True:
            try:
                arrays = next(iterator)
            except StopIteration:
                return
            except (RuntimeError, ConnectionError, EOFError) as err:
                failure = worker_failure(err)
                if failure is None:
                    raise
                raise failure from None
            x, y = (torch.from_numpy(a) for a in arrays)
            yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
    finally:
        # PyTorch ends the workers when the iterator is garbage-collected, but a traceback passing through
        # it keeps it alive, and with it a SIGCHLD handler that raises about a dead worker at random later
        # moments: end them now
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def worker_failure(err: BaseException) -> SegtoolError | None:
    """The one-line error for a data worker that died, or None if ``err`` is something else.

    A worker killed from outside (most often by the kernel when memory runs
    out) is not a bug, so it should not end in a traceback. PyTorch reports
    it as a ``RuntimeError``, from the next batch or, through its SIGCHLD
    handler, from wherever the training process happens to be: callers
    catch it around their whole loop.

    Examples
    --------
    >>> str(worker_failure(RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed.")))
    'data worker process stopped: DataLoader worker (pid 7) is killed by signal: Killed; if memory ran out, use fewer --workers'
    >>> worker_failure(RuntimeError("shapes do not match")) is None
    True
    """
    text = first_line(err)
    died = isinstance(err, RuntimeError) and text.startswith("DataLoader worker") and (
        "exited unexpectedly" in text or "killed by signal" in text
    )
    # a worker that died while sending a batch: the pipe to it breaks
    lost = isinstance(err, (ConnectionError, EOFError))
    if died or lost:
        return SegtoolError(f"data worker process stopped: {text.rstrip('. ')}; if memory ran out, use fewer --workers")
    return None
