"""One stack per var dir: a killed supervisord's programs are found, named and stopped.

``kill -9`` of supervisord leaves gunicorn, the dispatchers and the reporter running under
init.  A new start must refuse while they live, naming them; ``asyncmail shutdown`` must stop
them; then a start works again.  A web that cannot bind its port ends FATAL, not RUNNING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from tests.support.procs import ROOT, free_port, wait_for
from tests.support.stack import ASYNCMAIL, Stack, alive

pytestmark = pytest.mark.slow
PROGRAMS = ("web", "reporter", "dispatcher-00")


def asyncmail(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ASYNCMAIL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=220
    )


def test_start_after_kill_9_is_refused_until_shutdown_stops_the_leftovers(var_dir):
    port = free_port()
    first = Stack(var_dir, port=port, dispatchers=1)
    try:
        first.start(expect_running=PROGRAMS)
        programs = {name: first.program_pid(name) for name in PROGRAMS}
        ghosts = first.pids() - {first.proc.pid}  # the programs and gunicorn's workers
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        assert all(alive(pid) for pid in programs.values())

        refused = asyncmail(first.env, "supervisord")
        assert refused.returncode == 1, refused.stderr
        for pid in programs.values():
            assert f"(pid {pid})" in refused.stderr
        assert first.healthy()  # the refused start touched nothing: the ghost web still answers

        stopped = asyncmail(first.env, "shutdown")
        assert stopped.returncode == 0, stopped.stderr
        assert "leftovers" in stopped.stdout
        wait_for(lambda: not any(alive(p) for p in ghosts), timeout=5, message="ghosts gone")

        second = Stack(var_dir, port=port, dispatchers=1).start(expect_running=PROGRAMS)
        assert second.stop() == set()
    finally:
        first.stop(signal.SIGKILL)


def test_a_web_that_cannot_bind_ends_fatal(var_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        stack = Stack(var_dir, port=holder.getsockname()[1], dispatchers=1).launch()
        try:
            states = set()

            def fatal() -> bool:
                states.add(stack.status().get("web"))
                return "FATAL" in states

            wait_for(fatal, timeout=120, interval=0.5, message="web FATAL")
            assert "RUNNING" not in states
        finally:
            assert stack.stop() == set()
