"""Dispatchers for tests: in process on a fixed clock, or real ``python -m dispatcher``."""

from __future__ import annotations

import contextlib
import random
import subprocess
from pathlib import Path

from common import wakeup
from common.guard import Guard
from common.ratelimit import Ledger
from dispatcher import metering
from dispatcher.attachments import Fetcher
from dispatcher.core import Dispatcher
from dispatcher.pool import Pool
from tests.support import procs
from tests.support.db import enqueue
from tests.support.factories import T0, Clock


def make_dispatcher(
    conn, config, cert=None, clock=None, name: str = "test", seed: int = 7, **kwargs
) -> Dispatcher:
    """A Dispatcher wired as the process wires it, on ``clock`` (a fixed Clock by default).

    Dispatchers made on one config share its rate-limit ledger, as processes do.
    """
    clock = clock or Clock()
    ledger = Ledger(config.ratelimit_dir, metering.history(conn))
    guard = Guard()  # deadlines run on the real monotonic clock, whatever ``clock`` says
    pool = Pool(context=cert.client_context() if cert else None, clock=clock, guard=guard)
    return Dispatcher(
        conn, config, ledger=ledger, pool=pool, fetcher=Fetcher(config, guard=guard),
        name=name, clock=clock, rng=random.Random(seed), guard=guard, **kwargs,
    )  # fmt: skip


def send_ready(conn, config, *items: dict) -> None:
    """Queue the items (through intake, at T0) and let one dispatcher send all that is ready."""
    enqueue(conn, config, *items)
    dispatcher = make_dispatcher(conn, config)
    while dispatcher.run_once(T0):
        pass
    dispatcher.close()


def wake_socket(config, number: int) -> Path:
    """Where dispatcher-NN binds its wake-up socket, once its signal handlers are installed."""
    return wakeup.wake_dir(config.run_dir) / f"dispatcher-dispatcher-{number:02d}.sock"


def start_dispatcher(config, number: int, **settings) -> subprocess.Popen:
    """``python -m dispatcher`` as supervisord starts dispatcher-NN, on config's var dir."""
    config.metrics_dir.mkdir(exist_ok=True)
    env = procs.service_env(config.var_dir, config.config_path, **settings)
    env["SUPERVISOR_PROCESS_NAME"] = f"dispatcher-{number:02d}"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(config.metrics_dir)
    return procs.start("dispatcher", env, config.var_dir / f"dispatcher-{number:02d}.log")


@contextlib.contextmanager
def dispatchers(config, count: int, **settings):
    """``count`` dispatcher processes, up and listening; stopped (SIGTERM) and checked after."""
    started = []
    try:
        for n in range(1, count + 1):
            started.append(start_dispatcher(config, n, **settings))
        # from the socket on, a SIGTERM is a clean stop, not a kill during start-up
        sockets = [wake_socket(config, n) for n in range(1, count + 1)]
        procs.wait_for(lambda: all(s.exists() for s in sockets), message="dispatchers up")
        yield started
    finally:
        codes = [procs.stop(proc) for proc in started]
    assert codes == [0] * count, "a dispatcher did not stop cleanly"


def wait_received(peer, count: int, timeout: float = 40) -> None:
    """Block until the peer accepted at least ``count`` messages."""
    procs.wait_for(lambda: len(peer.received) >= count, timeout, message=f"{count} messages")
