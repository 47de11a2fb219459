"""Tests for segtool.pipeline.stream: overlapped stages, in order, bounded, stoppable."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from segtool.pipeline.stream import Finished, prefetch, run_staged


def _record():
    results = []
    return results, lambda item, result: results.append((item, result))


def test_results_come_back_in_input_order_whatever_the_stage_times():
    results, on_result = _record()
    delays = [0.03, 0.0, 0.02, 0.0, 0.01, 0.0]

    def finish(state):
        time.sleep(delays[state])  # later items often finish first on the pool
        return state * 10

    run_staged(range(6), load=lambda i: i, infer=lambda s: s, finish=finish, on_result=on_result, finish_threads=3)
    assert results == [(i, i * 10) for i in range(6)]


def test_stages_of_consecutive_items_overlap():
    events = []
    lock = threading.Lock()

    def log(name, i):
        with lock:
            events.append((name, i))

    def stage(name, pause):
        def run(i):
            log(name + "+", i)
            time.sleep(pause)
            log(name + "-", i)
            return i

        return run

    _, on_result = _record()
    run_staged(range(4), load=stage("load", 0.02), infer=stage("infer", 0.05), finish=stage("finish", 0.05),
               on_result=on_result)
    # item 1 was loaded, and item 0 finished, while the network worked on another item
    assert events.index(("load+", 2)) < events.index(("infer-", 1))
    assert events.index(("finish+", 0)) < events.index(("infer-", 1))


def test_memory_is_bounded():
    alive, peak = set(), [0]
    lock = threading.Lock()

    def load(i):
        with lock:
            alive.add(i)
            peak[0] = max(peak[0], len(alive))
        return i

    def finish(i):
        time.sleep(0.02)  # the slow stage: items pile up in front of it unless bounded
        with lock:
            alive.discard(i)
        return i

    _, on_result = _record()
    run_staged(range(30), load=load, infer=lambda i: i, finish=finish, on_result=on_result, read_ahead=1,
               finish_threads=1)
    # one finishing, one waiting for the pool, one in the network, one queued, one being loaded
    assert peak[0] <= 5


def test_finished_ends_an_item_early_and_exceptions_propagate():
    results, on_result = _record()
    run_staged(range(4), load=lambda i: Finished("skipped") if i == 1 else i,
               infer=lambda s: Finished("small") if s == 2 else s, finish=lambda s: s, on_result=on_result)
    assert results == [(0, 0), (1, "skipped"), (2, "small"), (3, 3)]

    def load(i):
        if i == 2:
            raise RuntimeError("broken loader")
        return i

    with pytest.raises(RuntimeError, match="broken loader"):
        run_staged(range(4), load=load, infer=lambda s: s, finish=lambda s: s, on_result=lambda *a: None)


def test_stop_starts_no_further_item():
    results, on_result = _record()
    loaded = []

    def load(i):
        loaded.append(i)
        return i

    run_staged(range(20), load=load, infer=lambda s: s, finish=lambda s: "bad" if s == 3 else s,
               on_result=on_result, stops=lambda result: result == "bad")
    assert results[:4] == [(0, 0), (1, 1), (2, 2), (3, "bad")]
    assert len(results) == 4  # items already in the network when 3 failed are dropped, not finished
    assert max(loaded) <= 6


def test_interrupt_completes_items_being_finished_and_reraises():
    results, on_result = _record()
    finishing = threading.Event()

    def finish(s):
        finishing.set()
        time.sleep(0.05)
        return s

    def infer(s):
        if s == 2:
            finishing.wait(1)
            raise KeyboardInterrupt
        return s

    with pytest.raises(KeyboardInterrupt):
        run_staged(range(10), load=lambda i: i, infer=infer, finish=finish, on_result=on_result)
    assert (0, 0) in results and all(item < 2 for item, _ in results)


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("mid-stream")

    got = []
    with pytest.raises(ValueError, match="mid-stream"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]



def test_prefetch_lets_go_of_an_item_while_the_next_is_computed():
    # The band schedule streams tile rows of maps (100+ MB each) through prefetch: an item the consumer has
    # dropped must not stay alive on either side of the queue while the next one is computed.
    class Item:
        pass

    refs, released = [], []

    def items():
        for _ in range(3):
            if refs:  # computing the next item: the consumer drops the last one and waits
                deadline = time.monotonic() + 5
                while refs[-1]() is not None and time.monotonic() < deadline:
                    gc.collect()
                    time.sleep(0.01)
                released.append(refs[-1]() is None)
            item = Item()
            refs.append(weakref.ref(item))
            yield item
            del item

    for item in prefetch(items(), depth=1):
        del item
    assert released == [True, True]
