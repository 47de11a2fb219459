"""Tests for segtool.train.loader: training batches made here or by worker processes."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest
import torch
from skimage.draw import disk

from segtool.errors import InputError, SegtoolError
from segtool.train.augment import AugmentOptions
from segtool.model.config import UNetConfig
from segtool.train.dataset import PatchSampler, prepare_sample
from segtool.train.loader import auto_workers, batch_generator, iterate_batches, resume_workers
from segtool.train.ring import check_shared_memory, ring_batches


def make_sampler(seed: int = 0, *, elastic: bool = True) -> PatchSampler:
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(3):
        labels = np.zeros((48, 56), np.uint16)
        for k in range(1, 5):
            labels[disk(tuple(rng.integers(8, 40, 2)), int(rng.integers(4, 8)), shape=labels.shape)] = k
        image = (labels > 0) * 100 + rng.normal(20, 8, labels.shape)
        samples.append(prepare_sample(image, labels, UNetConfig(depth=2, patch_size=32)))
    return PatchSampler(samples, patch_size=32, rng=np.random.default_rng(seed), augment=AugmentOptions(elastic=elastic))


def as_arrays(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in batches]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))


def test_no_workers_draws_from_the_samplers_own_generator_in_order():
    # workers=0 must stay the scheme of earlier segtool versions: batch after batch from the one generator
    reference = make_sampler(7)
    expected = [reference.batch(4) for _ in range(3)]
    got = as_arrays(iterate_batches(make_sampler(7), batch_size=4, seed=99, start=0, stop=3))
    assert same_batches(got, expected)
    assert got[0][0].shape == (4, 1, 32, 32) and got[0][0].dtype == np.float32


def test_workers_make_each_batch_from_its_own_generator_whatever_their_number():
    sampler = make_sampler()
    expected = [sampler.batch(4, rng=batch_generator(5, k)) for k in range(2, 7)]
    one = as_arrays(iterate_batches(make_sampler(), batch_size=4, seed=5, start=2, stop=7, workers=1))
    two = as_arrays(iterate_batches(make_sampler(), batch_size=4, seed=5, start=2, stop=7, workers=2))
    assert same_batches(one, expected) and same_batches(two, expected)
    # the batches differ from one another, and another seed gives other batches
    assert not np.array_equal(expected[0][0], expected[1][0])
    other = as_arrays(iterate_batches(make_sampler(), batch_size=4, seed=6, start=2, stop=3, workers=2))
    assert not np.array_equal(other[0][0], expected[0][0])


def test_batch_generators_are_fixed_by_seed_and_number():
    draws = {(seed, k): batch_generator(seed, k).random(3).tolist() for seed in (0, 1) for k in (0, 1)}
    assert batch_generator(1, 1).random(3).tolist() == draws[1, 1]
    assert len({tuple(v) for v in draws.values()}) == 4
    # independent of the run's own generator (which workers=0 uses)
    assert draws[0, 0] != np.random.default_rng(0).random(3).tolist()


def test_stopping_early_ends_the_worker_processes():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    batches = iterate_batches(make_sampler(), batch_size=2, seed=0, start=0, stop=100, workers=2)
    next(batches)
    started = {p.pid for p in me.children(recursive=True)} - before
    assert len(started) >= 2
    batches.close()
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=10)
    assert not alive


def test_an_empty_range_yields_nothing_and_bad_arguments_are_refused():
    assert list(iterate_batches(make_sampler(), batch_size=2, seed=0, start=4, stop=4, workers=2)) == []
    with pytest.raises(InputError, match="workers must be an integer >= 0"):
        next(iterate_batches(make_sampler(), batch_size=2, seed=0, start=0, stop=1, workers=-1))
    with pytest.raises(InputError, match="start <= stop"):
        next(iterate_batches(make_sampler(), batch_size=2, seed=0, start=3, stop=1))


@pytest.mark.parametrize(
    "device, cores, expected",
    [("cpu", 1, 0), ("cpu", 2, 0), ("cpu", 4, 1), ("cpu", 16, 4), ("cuda", 2, 1), ("cuda", 16, 15), ("cuda", 64, 16),
     ("mps", 8, 7), (torch.device("cpu"), 8, 2)],
)
def test_auto_workers_rule(device, cores, expected):
    assert auto_workers(device, cores=cores) == expected


def test_auto_workers_reads_this_machines_cores():
    assert 0 <= auto_workers("cpu") <= max(1, psutil.cpu_count() // 4)


def test_resume_keeps_the_scheme_of_random_draws():
    assert resume_workers(0, 0) == 0 and resume_workers(0, 8) == 0
    assert resume_workers(3, 8) == 8 and resume_workers(3, 0) == 1


def numbered_batch(number: int, x: np.ndarray, y: np.ndarray) -> None:
    if number == 4:
        raise ValueError("no patch for this one")
    x[...], y[...] = number, -number


def test_the_ring_yields_batches_in_order_and_raises_a_workers_error():
    first = (np.full((2, 1, 4, 4), 1, np.float32), np.full((2, 3, 4, 4), -1, np.float32))
    seen = []
    with pytest.raises(RuntimeError, match="data worker failed on batch 4:(.|\n)*no patch for this one"):
        for x, y in ring_batches(numbered_batch, first, start=1, stop=9, workers=3):
            assert x.shape == (2, 1, 4, 4) and y.shape == (2, 3, 4, 4)
            assert bool((x == x[0, 0, 0, 0]).all()) and bool((y == -x[0, 0, 0, 0]).all())
            seen.append(int(x[0, 0, 0, 0]))
    assert seen == [1, 2, 3]


def test_a_ring_larger_than_the_free_shared_memory_is_refused_in_one_line(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    check_shared_memory(1024, 2, folder=str(tmp_path))  # fits: nothing raised
    with pytest.raises(SegtoolError, match=r"^2 data workers need \d+ MiB of shared memory .* use fewer --workers"):
        check_shared_memory(free + 2**30, 2, folder=str(tmp_path))
