"""The real supervisord stack: launcher, numprocs from config, clean stop, make run + Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from common import store
from tests.support.procs import ROOT, free_port, service_env, wait_for
from tests.support.stack import ASYNCMAIL, Stack, alive, descendants

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(var_dir):
    """A stack on a free port with three dispatchers; stopped (and checked) by the test."""
    running = Stack(var_dir, port=free_port(), dispatchers=3)
    yield running
    running.stop(signal.SIGKILL)


def test_stack_runs_every_program_and_stops_with_nothing_left(stack, var_dir):
    (var_dir / "metrics").mkdir()
    (var_dir / "metrics" / "counter_424242.db").write_bytes(b"from a previous run")
    stack.start(expect_running=("web", "reporter"))
    names = set(stack.status())
    assert names == {"web", "reporter", "dispatcher-00", "dispatcher-01", "dispatcher-02"}
    assert not (var_dir / "metrics" / "counter_424242.db").exists()
    web = stack.program_pid("web")
    wait_for(lambda: len(descendants(web)) == 2, message="two gunicorn workers")
    conn = store.db.connect(var_dir / "asyncmail.db")
    wait_for(lambda: store.heartbeats.list_all(conn, time.time()), message="a heartbeat")
    conn.close()
    assert len(stack.pids()) >= 1 + 5 + 2
    # our configuration gives supervisord nothing to be critical about (control server
    # credentials; run as root, the launcher says it is meant)
    assert " CRIT " not in (var_dir / "log" / "supervisord.log").read_text()
    assert stack.stop(signal.SIGTERM) == set()
    assert oct((var_dir / "log").stat().st_mode & 0o777) == "0o700"


def test_sigint_stops_everything_like_ctrl_c(stack):
    stack.start(expect_running=("web", "reporter"))
    stack.pids()
    assert stack.stop(signal.SIGINT) == set()


def test_daemon_mode_and_shutdown_command(var_dir):
    env = service_env(var_dir, port=free_port(), dispatchers=1)
    started = subprocess.run([ASYNCMAIL, "supervisord"], cwd=ROOT, env=env, timeout=30)
    assert started.returncode == 0
    pid_file = var_dir / "run" / "supervisord.pid"
    pid = wait_for(lambda: pid_file.exists() and int(pid_file.read_text()), message="pid file")
    try:
        again = subprocess.run(
            [ASYNCMAIL, "supervisord"],
            cwd=ROOT,
            env=env,
            timeout=30,
            capture_output=True,
            text=True,
        )
        wait_for(lambda: descendants(pid), message="programs started")
        children = descendants(pid)
        assert again.returncode == 1 and "already runs" in again.stderr
        done = subprocess.run(
            [ASYNCMAIL, "shutdown"], cwd=ROOT, env=env, timeout=220, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert not alive(pid)
        wait_for(lambda: not any(alive(p) for p in children), timeout=5, message="children gone")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_bad_configuration_stops_startup_with_one_line(var_dir):
    env = service_env(var_dir, dispatchers="none")
    done = subprocess.run(
        [ASYNCMAIL, "supervisord", "-n"],
        cwd=ROOT,
        env=env,
        timeout=30,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "ASYNCMAIL_DISPATCHERS" in done.stderr
    assert not (var_dir / "run" / "supervisord.pid").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_then_ctrl_c_leaves_nothing_running(var_dir):
    port = free_port()
    env = service_env(var_dir, port=port, dispatchers=1)
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: set[int] = set()
    try:
        stack = Stack(var_dir, port=port)
        wait_for(stack.healthy, timeout=60, interval=0.2, message="make run: /health")
        seen = {proc.pid} | descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wait_for(lambda: not any(alive(p) for p in seen), timeout=5, message="all gone")
    assert len(seen) >= 5  # make, supervisord, gunicorn master + 2 workers, ...
