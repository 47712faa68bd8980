"""The rate-limit ledger shared by real processes: strict windows, no wedge after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from common.ratelimit import Ledger, Limits
from tests.support.procs import ROOT, wait_for
from tests.support.ratelimit import assert_strict

# Reserve in a loop until the deadline; on a refusal sleep until the slot frees (as a
# dispatcher defers); print the granted times as JSON.
HAMMER = """
import json, sys, time
from common.ratelimit import Ledger, Limits
directory, limits, deadline = sys.argv[1], Limits(**json.loads(sys.argv[2])), float(sys.argv[3])
ledger, granted = Ledger(directory), []
while (now := time.time()) < deadline:
    frees = ledger.reserve("shared", limits, now)
    if frees is None:
        granted.append(now)
    else:
        time.sleep(min(max(frees - now, 0.0), max(deadline - now, 0.0)))
print(json.dumps(granted))
"""

# Take the lock through reserve() and stay inside it: the rebuild of a new file never returns.
HOLDER = """
import pathlib, sys, time
from common.ratelimit import Ledger, Limits
marker = pathlib.Path(sys.argv[2])
def rebuild(account_id, since):
    marker.write_text("locked")
    time.sleep(600)
Ledger(sys.argv[1], rebuild).reserve("shared", Limits(per_second=1), time.time())
"""


def python(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def hammer(tmp_path, processes: int, limits: Limits, seconds: float) -> list[list[float]]:
    """Run ``processes`` reserving processes against one ledger; each one's granted times."""
    deadline = time.time() + 1.0 + seconds  # a second to start the interpreters
    args = (tmp_path, json.dumps(limits.__dict__), deadline)
    procs = [python(HAMMER, *args) for _ in range(processes)]
    try:
        outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0] * processes
    return [json.loads(output) for output in outputs]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 5])
def test_processes_hammering_one_ledger_never_exceed_a_window(tmp_path, processes):
    limits = Limits(per_second=20, per_hour=1000)
    granted = hammer(tmp_path, processes, limits, seconds=2.0)
    recorded = Ledger(tmp_path).starts("shared")
    # every grant is in the ledger exactly once, and the ledger holds the windows
    assert len(recorded) == sum(map(len, granted)) >= 20
    assert_strict(recorded, limits)
    assert sum(1 for times in granted if times) >= 2  # the processes really did compete


@pytest.mark.slow
def test_combined_second_and_minute_limits_across_processes(tmp_path):
    limits = Limits(per_second=10, per_minute=15)
    granted = hammer(tmp_path, 3, limits, seconds=2.5)
    recorded = Ledger(tmp_path).starts("shared")
    assert len(recorded) == sum(map(len, granted))
    assert 10 <= len(recorded) <= 15
    assert_strict(recorded, limits)


@pytest.mark.slow
def test_a_sigkilled_lock_holder_does_not_wedge_the_others(tmp_path):
    marker = tmp_path / "locked"
    holder = python(HOLDER, tmp_path / "ratelimit", marker)
    try:
        wait_for(marker.exists, message="the holder to take the lock")
        result: list = []
        waiter = threading.Thread(
            target=lambda: result.append(
                Ledger(tmp_path / "ratelimit").reserve("shared", Limits(per_second=1), time.time())
            )
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "the lock holder should have blocked the reservation"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        waiter.join(10)
        assert not waiter.is_alive() and result == [None]
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        holder.stdout.close()
    assert len(Ledger(tmp_path / "ratelimit").starts("shared")) == 1
