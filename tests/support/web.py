"""The API under the real gunicorn, started as supervisord starts it (etc/gunicorn.conf.py)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.procs import free_port, service_env, start, stop, wait_for
from tests.support.stack import descendants


@dataclass
class Server:
    """A running gunicorn: its base URL, port and master process."""

    base: str
    port: int
    master: subprocess.Popen
    log: Path

    def workers(self) -> set[int]:
        return descendants(self.master.pid)


@contextlib.contextmanager
def gunicorn_server(var_dir: Path, **settings) -> Iterator[Server]:
    """``gunicorn -c etc/gunicorn.conf.py web.wsgi:app`` on a free port; stopped on exit.

    ``settings`` are configuration keys (``api_token=...``); the [smtp] default account
    points at a closed port unless given, so messages without account_id are accepted.
    """
    port = free_port()
    settings.setdefault("smtp_host", "127.0.0.1")
    settings.setdefault("smtp_port", free_port())
    env = service_env(var_dir, port=port, **settings)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(var_dir / "metrics")  # as supervisord sets it
    (var_dir / "metrics").mkdir(exist_ok=True)
    log = var_dir / "gunicorn.log"
    proc = start("gunicorn", env, log, "-c", "etc/gunicorn.conf.py", "web.wsgi:app")
    local = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(local, proc), message="gunicorn /health")
        yield Server(f"http://{settings.get('host', '127.0.0.1')}:{port}", port, proc, log)
    finally:
        assert stop(proc) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()  # nothing went wrong unseen


def _healthy(base: str, proc) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"gunicorn exited with {proc.returncode}")
    try:
        return requests.get(base + "/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
