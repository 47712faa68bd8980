"""A real ``litestream replicate``, configured as the launcher does it, for tests and bench."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from cli.replication import write_private
from common import replication
from tests.support.procs import wait_for


def start(config, log_path: Path, log_level: str | None = None) -> subprocess.Popen:
    """``litestream replicate`` for this configuration; returns once it has synced once.

    ``log_level`` replaces the generated one (``debug`` logs the start and end of every sync).
    """
    config.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    generated = replication.config_path(config)
    document = json.loads(replication.litestream_config(config))
    if log_level is not None:
        document["logging"]["level"] = log_level
    write_private(generated, json.dumps(document, indent=2) + "\n")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [replication.binary(), "replicate", "-config", str(generated), "-no-expand-env"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=replication.environment(os.environ),
        )
    try:
        wait_for(
            lambda: replication.lag(config, time.time()).lag_seconds is not None,
            timeout=30,
            message="litestream replicating",
        )
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    """TERM (Litestream's last upload, then exit), KILL if it takes too long."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sync(config) -> dict:
    """Ask Litestream to upload everything committed so far; returns once the replica has it."""
    body = json.dumps({"path": str(Path(config.database).resolve()), "wait": True})
    conn = replication.ControlConnection(replication.socket_path(config), timeout=60)
    try:
        conn.request("POST", "/sync", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, answer
    return answer
