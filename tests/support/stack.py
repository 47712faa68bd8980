"""The whole supervisord stack for tests and benchmarks: start it, drive it, prove it is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.procs import ROOT, service_env, wait_for

ASYNCMAIL = str(Path(sys.executable).parent / "asyncmail")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (gunicorn workers below the master, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


class Stack:
    """``asyncmail supervisord -n`` in a private var dir; ``stop()`` returns what survived."""

    def __init__(self, var_dir: Path, ini: Path | None = None, **settings):
        self.var_dir = Path(var_dir)
        self.env = service_env(var_dir, ini, **settings)
        self.port = int(settings.get("port", 8000))
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()
        self.started_at = 0.0  # time.time() at start(): every heartbeat after it is this run's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, expect_running: tuple[str, ...] = ("web",), timeout: float = 30) -> Stack:
        """Launch and wait until the named programs are RUNNING and /health answers.

        A stack that never gets there is stopped before the failure is raised: its processes
        run in their own session and would otherwise outlive the test.
        """
        self.launch()
        try:
            wait_for(
                lambda: all(self.status().get(n) == "RUNNING" for n in expect_running),
                timeout,
                interval=0.2,
                message=f"{expect_running} RUNNING",
            )
            wait_for(self.healthy, timeout, interval=0.1, message="/health")
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> Stack:
        """``asyncmail supervisord -n`` in the background; returns at once."""
        self.started_at = time.time()
        log = open(self.var_dir.parent / "supervisord.out", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [ASYNCMAIL, "supervisord", "-n"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.proc.log_file = log
        return self

    def healthy(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        return False

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """``asyncmail ctl ARGS``: supervisorctl against this stack."""
        return self.run("ctl", *args, check=check)

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """One ``asyncmail`` command with this stack's environment."""
        done = subprocess.run(
            [ASYNCMAIL, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=200,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"asyncmail {args}: {done.stdout}{done.stderr}")
        return done

    def status(self) -> dict[str, str]:
        """{process name: state}, e.g. {'dispatcher-00': 'RUNNING', 'web': 'RUNNING'}."""
        lines = self.ctl("status").stdout.splitlines()
        parsed = [line.split() for line in lines if line.strip()]
        return {p[0].split(":")[-1]: p[1] for p in parsed if len(p) > 1 and p[1].isupper()}

    def pids(self) -> set[int]:
        """supervisord and everything below it right now (remembered for the final check)."""
        if self.proc is not None:
            self.seen |= {self.proc.pid} | descendants(self.proc.pid)
        return {p for p in self.seen if alive(p)}

    def program_pid(self, name: str) -> int:
        """The pid of a program by its short name ('web', 'dispatcher-01')."""
        full = f"dispatcher:{name}" if name.startswith("dispatcher-") else name
        return int(self.ctl("pid", full).stdout.strip())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> set[int]:
        """Signal supervisord, wait for it; kill and return any process that outlived it."""
        if self.proc is None:
            return set()
        self.pids()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.log_file.close()
        deadline = time.monotonic() + 5  # orphans reparented to init may take a moment to go
        while {p for p in self.seen if alive(p)} and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = {p for p in self.seen if alive(p)}
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
        return survivors
