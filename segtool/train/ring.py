"""Worker processes that make training batches straight into shared memory.

A data worker spends its time cutting and deforming patches; what it costs
beyond that is moving each batch to the training process. PyTorch's
DataLoader pickles a returned array through a pipe (four copies of every
batch and a fresh allocation on each side), or gives each returned tensor a
new shared-memory segment with a hand-shake per tensor. Both cost a third of
the patch work again on a 2-core machine (BENCHMARKS.md, "Data workers").

Here the training process allocates a fixed ring of batch slots in shared
memory once. It tells a worker "make batch ``k`` into slot ``s``" through
that worker's pipe; the worker writes the patches into the slot in place
and answers "``k`` is in ``s``" (a few bytes). The training process hands
the slot out as tensors without copying, and gives the slot back to the
ring when the next batch is asked for.

Which worker makes which batch does not matter: a batch's random draws come
from its own generator (``make_batch`` receives the batch number), so the
batches are the same, in the same order, for any number of workers.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait

import numpy as np
import torch
import torch.multiprocessing as mp

from segtool.errors import SegtoolError

__all__ = ["BatchMaker", "check_shared_memory", "ring_batches"]

#: ``make_batch(number, x, y)`` writes batch ``number``'s patches into the arrays ``x`` and ``y`` (in place).
BatchMaker = Callable[[int, np.ndarray, np.ndarray], None]

# Batches a worker may have been asked for and not yet delivered: one in the making and one queued, so that it
# never waits for the training process to hand it the next number.
_AHEAD_PER_WORKER = 2


def _worker_loop(make_batch: BatchMaker, slots_x: torch.Tensor, slots_y: torch.Tensor, conn: Connection) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the training process handles it (finishes the step,
    # writes last.pt) and then ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    xs, ys = slots_x.numpy(), slots_y.numpy()
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the training process is gone
            return
        if task is None:
            return
        number, slot = task
        try:
            make_batch(number, xs[slot], ys[slot])
        except BaseException:  # noqa: BLE001 - reported to the training process, which raises it
            conn.send(("error", number, traceback.format_exc()))
            return
        conn.send(("done", number, slot))


class _Ring:
    """The slots, the worker processes and the book-keeping of who holds which slot."""

    def __init__(self, make_batch: BatchMaker, first: tuple[np.ndarray, np.ndarray], workers: int) -> None:
        slots = _AHEAD_PER_WORKER * workers + 1  # + the one the training step is using
        check_shared_memory(slots * (first[0].nbytes + first[1].nbytes), workers)
        self.x = torch.empty((slots, *first[0].shape), dtype=torch.from_numpy(first[0]).dtype).share_memory_()
        self.y = torch.empty((slots, *first[1].shape), dtype=torch.from_numpy(first[1]).dtype).share_memory_()
        self.free = list(range(slots))
        self.asked = [0] * workers  # batches asked of each worker and not yet delivered
        self.ready: dict[int, int] = {}  # batch number -> slot
        self.failed: dict[int, str] = {}  # batch number -> the traceback of the worker that failed on it
        self.failed_workers: set[int] = set()
        context = mp.get_context()
        self.conns: list[Connection] = []
        self.processes = []
        for _ in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker_loop, args=(make_batch, self.x, self.y, theirs), daemon=True)
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    def ask(self, number: int) -> bool:
        """Give batch ``number`` to the least busy working worker, if a slot is free (and a worker is left)."""
        working = [w for w in range(len(self.conns)) if w not in self.failed_workers]
        if not self.free or not working:
            return False
        worker = min(working, key=self.asked.__getitem__)
        try:
            self.conns[worker].send((number, self.free[-1]))
        except (BrokenPipeError, ConnectionError):
            process = self.processes[worker]
            process.join(timeout=5)  # the pipe breaks as the process dies: let it finish dying, for its exit code
            raise _dead(process) from None
        self.free.pop()
        self.asked[worker] += 1
        return True

    def receive(self) -> None:
        """Wait until some worker delivers a batch, reports a failure, or dies, and note it.

        A worker whose ``make_batch`` raised reports it and ends; the failure
        is kept by batch number (:attr:`failed`), so the batches before it are
        still delivered. A worker that dies without a word is an error at once.
        """
        working = [w for w in range(len(self.conns)) if w not in self.failed_workers]
        if not working:  # cannot happen: a batch waited for comes after the failed ones, which raise first
            raise RuntimeError(f"every data worker failed: {self.failed}")
        conns = [self.conns[w] for w in working]
        sentinels = {self.processes[w].sentinel: self.processes[w] for w in working}
        for ready in wait(conns + list(sentinels)):
            if ready in sentinels:
                # a sentinel is also ready when the process has finished its last message; read that first
                continue
            worker = self.conns.index(ready)
            try:
                kind, number, detail = ready.recv()
            except (EOFError, ConnectionError):
                raise _dead(self.processes[worker]) from None
            if kind == "error":
                self.failed[number] = detail
                self.failed_workers.add(worker)
                continue
            self.asked[worker] -= 1
            self.ready[number] = detail
        for worker in working:
            if worker not in self.failed_workers and self.processes[worker].exitcode is not None:
                raise _dead(self.processes[worker])

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, ConnectionError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for conn in self.conns:
            conn.close()


def check_shared_memory(needed: int, workers: int, *, folder: str = "/dev/shm") -> None:
    """Refuse, in one line, a ring that the shared-memory file system cannot hold.

    Shared memory lives in ``/dev/shm`` on Linux, which containers often
    keep small (Docker: 64 MiB). Allocating more than it holds does not fail
    at once: the first write to a missing page kills the worker with SIGBUS.
    Where the folder does not exist (macOS, Windows), nothing is checked.

    Raises
    ------
    SegtoolError
        If ``needed`` bytes exceed what ``folder`` has free.

    Examples
    --------
    >>> check_shared_memory(1, 2, folder="/no/such/folder") is None
    True
    """
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise SegtoolError(
            f"{workers} data workers need {needed / 2**20:.0f} MiB of shared memory for their batches and {folder} "
            f"has {free / 2**20:.0f} MiB free: use fewer --workers, a smaller --batch-size, or a larger {folder}"
        )
    return None


def _dead(process) -> SegtoolError:
    code = process.exitcode
    how = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return SegtoolError(f"data worker process stopped: {how}; if memory ran out, use fewer --workers")


def ring_batches(make_batch: BatchMaker, first: tuple[np.ndarray, np.ndarray], *, start: int, stop: int,
                 workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield batches ``start`` to ``stop - 1`` as tensors, made by ``workers`` processes.

    Parameters
    ----------
    make_batch : callable
        ``make_batch(number, x, y)`` fills ``x`` and ``y`` with batch
        ``number``. It runs in the worker processes (started by fork where
        the platform has it, so it need not be picklable there).
    first : tuple of ndarray
        Batch ``start``, already made (by the caller, while the workers
        would still be starting); it fixes the slots' shapes and dtypes.
    start, stop : int
        The batch numbers to yield, ``start < stop``.
    workers : int
        Worker processes, at least 1.

    Yields
    ------
    x, y : Tensor
        Views of a shared-memory slot, valid until the next batch is asked
        for (then a worker may write the slot again). Copy what must outlive
        the step.

    Raises
    ------
    SegtoolError
        If a worker process dies (killed, out of memory).
    RuntimeError
        If ``make_batch`` raised in a worker (a bug): the message carries the
        worker's traceback.

    Notes
    -----
    Closing the generator (or dropping it) ends the workers.
    """
    ring = _Ring(make_batch, first, workers)
    following = start + 1
    try:
        while following < stop and ring.ask(following):
            following += 1
        yield torch.from_numpy(first[0]), torch.from_numpy(first[1])
        for number in range(start + 1, stop):
            while number not in ring.ready:
                if number in ring.failed:
                    raise RuntimeError(f"data worker failed on batch {number}:\n{ring.failed[number]}")
                ring.receive()
            slot = ring.ready.pop(number)
            yield ring.x[slot], ring.y[slot]
            ring.free.append(slot)
            while following < stop and ring.ask(following):
                following += 1
    finally:
        ring.close()
