"""Wake-up datagrams between processes (common/wakeup.py)."""

from __future__ import annotations

import os
import signal

from common import wakeup


def test_notify_wakes_every_waiter_of_a_kind_and_no_other(tmp_path):
    run_dir = tmp_path / "run"
    first = wakeup.Waiter(run_dir, wakeup.DISPATCHER, "d-00")
    second = wakeup.Waiter(run_dir, wakeup.DISPATCHER, "d-01")
    reporter = wakeup.Waiter(run_dir, wakeup.REPORTER, "reporter")
    try:
        assert wakeup.notify(run_dir, wakeup.DISPATCHER) == 2
        assert first.wait(5) and second.wait(5)
        assert not reporter.wait(0.01)
        assert not first.wait(0.01)  # the wake-up was drained
    finally:
        for waiter in (first, second, reporter):
            waiter.close()
    assert os.listdir(run_dir / "wake") == []


def test_nobody_listening_is_not_an_error(tmp_path):
    assert wakeup.notify(tmp_path / "missing", wakeup.DISPATCHER) == 0


def test_a_var_dir_deeper_than_a_socket_path_allows_still_works(tmp_path):
    run_dir = tmp_path / ("x" * 60) / ("y" * 60) / "run"
    waiter = wakeup.Waiter(run_dir, wakeup.DISPATCHER, "dispatcher-00")
    try:
        assert len(os.fsencode(waiter.path)) > wakeup.MAX_SUN_PATH
        assert wakeup.notify(run_dir, wakeup.DISPATCHER) == 1
        assert waiter.wait(5)
    finally:
        waiter.close()


def test_a_signal_ends_the_wait(tmp_path):
    waiter = wakeup.Waiter(tmp_path / "run", wakeup.DISPATCHER, "d-00")
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
        assert waiter.wait(30)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        waiter.close()
