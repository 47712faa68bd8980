"""What every long-running worker process shares: signal flags, heartbeats, the main loop.

Signal handlers only record the signal; the loop acts on it between units of work:
  TERM/INT  first: finish the unit in hand, then stop;  second: exit at once
  HUP       re-read the configuration before the next unit
  USR1      wake up now (as a wake-up datagram would)
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import apsw

from common import metrics, pids, store
from common.config import Config, ConfigError, load_config
from common.logs import fields, setup_logging

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0  # seconds between heartbeat writes: cheap, and fresh enough for /status


class Signals:
    """Flags set by signal handlers; nothing else happens inside a handler."""

    def __init__(self):
        self.stop = False
        self.reload = False
        self.wake = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGUSR1, self._on_wake)

    def _on_stop(self, signum, frame):
        if self.stop:  # second TERM: the operator wants out now
            os._exit(1)
        self.stop = True

    def _on_reload(self, signum, frame):
        self.reload = True

    def _on_wake(self, signum, frame):
        self.wake = True


def process_name(kind: str) -> str:
    """supervisord's name for this process, or kind-pid when run by hand."""
    return os.environ.get("SUPERVISOR_PROCESS_NAME") or f"{kind}-{os.getpid()}"


class Heartbeat:
    """Records at most one heartbeat per HEARTBEAT_EVERY seconds, and the process's metrics."""

    def __init__(self, conn, name: str, kind: str, clock: Callable[[], float] = time.time):
        self.conn, self.name, self.kind, self.clock = conn, name, kind, clock
        self.last = 0.0
        self.sample = metrics.ProcessSampler(kind)

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last >= HEARTBEAT_EVERY:
            store.heartbeats.beat(self.conn, self.name, self.kind, os.getpid(), now)
            metrics.HEARTBEAT.labels(self.name).set(now)
            self.sample()
            self.last = now


def open_process(kind: str) -> tuple[Config, str, apsw.Connection]:
    """Configuration, process name and database of a worker process.

    A bad configuration (exit 2) or an unreachable database (exit 1) ends the process with
    one clear line, so supervisord's backoff shows why it does not start.
    """
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"{kind}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    name = process_name(kind)
    setup_logging(config.log_level, name)
    pids.record(config.run_dir, name)  # so a later start or `asyncmail shutdown` finds it
    atexit.register(pids.forget, config.run_dir, name)
    try:
        conn = store.db.connect(config.database, config.synchronous)
    except (apsw.Error, OSError) as exc:
        logger.error(fields(event="database_unavailable", path=config.database, reason=exc))
        raise SystemExit(1) from None
    return config, name, conn


def reload_config(apply: Callable[[Config], None]) -> None:
    """SIGHUP: re-read the configuration and hand it to ``apply``; a bad file keeps the old."""
    try:
        config = load_config()
    except ConfigError as exc:
        logger.error(fields(event="reload_refused", reason=exc))
        return
    logging.getLogger().setLevel(config.log_level)
    apply(config)
    logger.info(fields(event="reloaded"))


def run_forever(
    run_once: Callable[[], bool],
    wait: Callable[[float], bool],
    idle_seconds: Callable[[], float],
    signals: Signals,
    on_reload: Callable[[Config], None],
    heartbeat: Callable[[], None],
) -> int:
    """Loop until TERM: run one unit; when it found nothing to do, sleep until woken.

    ``run_once`` returns True when it did work (so the next unit may follow at once).
    Returns the process exit code.
    """
    while not signals.stop:
        if signals.reload:
            signals.reload = False
            reload_config(on_reload)
        heartbeat()
        busy = run_once()
        if signals.stop:
            break
        if not busy and not signals.wake:
            wait(idle_seconds())
        signals.wake = False
    return 0
