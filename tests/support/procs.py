"""Starting the service's real processes from tests, watching their state, never leaking them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(var_dir, ini_path=None, **settings) -> dict:
    """The environment a service process gets: this var dir, this INI file, overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCMAIL_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["ASYNCMAIL_VAR_DIR"] = str(var_dir)
    env["PYTHONUNBUFFERED"] = "1"
    if ini_path is not None:
        env["ASYNCMAIL_CONFIG"] = str(ini_path)
    for key, value in settings.items():
        env["ASYNCMAIL_" + key.upper()] = str(value)
    return env


def start(module: str, env: dict, log_path, *args) -> subprocess.Popen:
    """``python -m module`` with its output in log_path; stop it with ``stop()``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.log_file = log
    return proc


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 20) -> int:
    """Signal the process, wait, kill it if it does not go; returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_file.close()
    return proc.returncode


def wait_for(predicate, timeout: float = 20, interval: float = 0.02, message: str = ""):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")


def sleeping_in_select(pid: int) -> bool:
    """True while the process's main thread is blocked in select() or poll() (Linux).

    Before a dispatcher has talked to any SMTP server this is only ever its idle wait for a
    wake-up (``Waiter.wait``): the kernel's word that it finished its claim and sleeps.
    """
    with contextlib.suppress(OSError):
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        return "poll" in wchan or "select" in wchan
    return False


def signal_delivered(pid: int, sig: int) -> bool:
    """True once ``sig``, sent to the process, is no longer pending: its handler has it (Linux)."""
    bit = 1 << (sig - 1)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    pending = [int(line.split()[1], 16) for line in status if line[:7] in ("SigPnd:", "ShdPnd:")]
    return not any(mask & bit for mask in pending)
