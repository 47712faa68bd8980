"""Starting the service's real processes from tests, and never leaking them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
