"""Tests for segtool.train.interrupt: the flag a first Ctrl-C or SIGTERM sets, and a second Ctrl-C that aborts."""

from __future__ import annotations

import signal
import threading

import pytest

from segtool.train.interrupt import StopFlag


def test_first_signal_sets_the_flag_a_second_ctrl_c_aborts_and_handlers_come_back():
    told = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    flag = StopFlag(on_first=lambda: told.append(True))
    with flag:
        assert not flag()
        signal.raise_signal(signal.SIGTERM)
        assert flag() and flag.signal == signal.SIGTERM and told == [True]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_off_the_main_thread_no_handler_is_installed():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def use() -> None:
        with StopFlag() as flag:
            seen.append((flag(), signal.getsignal(signal.SIGINT)))

    worker = threading.Thread(target=use)
    worker.start()
    worker.join()
    assert seen == [(False, before)]
