"""Prometheus as a test peer: promtool, and a real server that scrapes a running stack."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.procs import free_port, stop, wait_for

SCRAPE_SECONDS = 1  # the stack answers in milliseconds; the test needs a few samples quickly


def tool(name: str) -> str:
    """A Prometheus binary; absent, it fails the test under CI and skips it elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: apt-get install prometheus (.ci/run does it)")
        pytest.skip(f"{name} is missing (Debian package prometheus)")
    return path


def promtool() -> str:
    return tool("promtool")


CONFIG = """
global:
  scrape_interval: {every}s
  evaluation_interval: {every}s
rule_files: [{rules}]
scrape_configs:
  - job_name: asyncmail
    static_configs: [{{targets: ["{target}"]}}]
"""


class Prometheus:
    """``prometheus`` on a free port, its data in ``directory``, scraping ``target``."""

    def __init__(self, directory: Path, target: str, rules: Path):
        self.directory, self.port = Path(directory), free_port()
        config = self.directory / "prometheus.yml"
        config.write_text(CONFIG.format(every=SCRAPE_SECONDS, rules=f'"{rules}"', target=target))
        self.argv = [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        """Start it and wait until it is ready to answer queries."""
        log = open(self.directory / "prometheus.log", "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.proc.log_file = log
        try:
            wait_for(self._ready, timeout=60, interval=0.2, message="prometheus /-/ready")
        except BaseException:  # its own session: it would outlive the test
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.directory / "prometheus.log").read_text()
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        return False

    def query(self, expr: str) -> dict:
        """The answer of an instant query: {"status": "success", "data": ...} or the error."""
        return requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()

    def rules(self) -> list[dict]:
        """Every loaded rule with its health and last error."""
        groups = requests.get(self.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
