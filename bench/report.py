"""Outcome-to-report latency and backlog drain rate of a real ``python -m reporter``.

The reporter runs as supervisord would start it (``synchronous=FULL``, its own process)
against a local upstream (``tests.support.upstream``) that timestamps each request's
arrival.  The bench plays the dispatchers: it commits terminal rows (``outcome_at`` = now)
and calls ``wakeup.notify`` exactly as a dispatcher does after recording outcomes.  Latency
of an item is its arrival at the upstream minus its ``outcome_at``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import store, wakeup
from common.config import load_config
from tests.support import procs
from tests.support.upstream import Upstream

WARMUP = 20  # outcomes before measuring: first connection, imports, page cache
LOW_LOAD_SAMPLES = 300
LOW_LOAD_GAP = 0.01  # seconds between outcomes: one at a time, nothing queued
REPORTED_ROWS = 50_000  # the "tens of thousands" at which the reference slows to ~45 ms
FLOW_RATE = 500  # outcomes per second
FLOW_SECONDS = 5.0
BACKLOG = 20_000
TARGETS = {
    "idle_p50_ms": 10.0,
    "idle_p99_ms": 50.0,
    "loaded_p50_ms": 10.0,
    "loaded_p99_ms": 50.0,
    "flow_500_per_s_p50_ms": 50.0,
    "backlog_rows_per_s": 5000.0,
}

# The bench stands in for the dispatchers, so it writes their terminal rows itself.
_OUTCOME = """
INSERT INTO messages (tenant_id, id, account_id, priority, payload, created_at, updated_at,
                      sent_ts, ready_at, enqueued_at, attempts, smtp_code, outcome_at, reported_ts)
VALUES ('default', ?, NULL, 2, '{}', ?, ?, ?, ?, ?, 1, 250, ?, ?)
"""


def _write_outcomes(conn, ids: list[str], now: float, reported: bool = False) -> None:
    rows = [
        (i, int(now), int(now), int(now), now, now, now, int(now) if reported else None)
        for i in ids
    ]
    with store.db.write(conn):
        conn.executemany(_OUTCOME, rows)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _latencies_ms(upstream: Upstream, outcome_at: dict[str, float]) -> list[float]:
    return [
        (request.arrived_at - outcome_at[item["id"]]) * 1000
        for request in upstream.answered()
        for item in request.items
        if item["id"] in outcome_at
    ]


def _paced(conn, config, upstream: Upstream, prefix: str, count: int, gap: float) -> list[float]:
    """One outcome every ``gap`` seconds, each announced; latencies in ms once all arrived."""
    upstream.clear()
    outcome_at: dict[str, float] = {}
    start = time.monotonic()
    for n in range(count):
        delay = start + n * gap - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        message_id, now = f"{prefix}-{n}", time.time()
        _write_outcomes(conn, [message_id], now)
        outcome_at[message_id] = now
        wakeup.notify(config.run_dir, wakeup.REPORTER)
    upstream.wait_for_items(count, timeout=60)
    return _latencies_ms(upstream, outcome_at)


def _drain_rate(conn, config, upstream: Upstream) -> float:
    """Rows per second from a committed backlog of BACKLOG outcomes to all marked reported."""
    upstream.clear()
    now = time.time()
    _write_outcomes(conn, [f"backlog-{n}" for n in range(BACKLOG)], now)
    started = time.perf_counter()
    wakeup.notify(config.run_dir, wakeup.REPORTER)
    procs.wait_for(lambda: store.reports.unreported_count(conn) == 0, timeout=120, interval=0.005)
    return BACKLOG / (time.perf_counter() - started)


def _summary(latencies: list[float]) -> dict:
    return {
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "samples": len(latencies),
    }


def _measure(conn, config, upstream: Upstream) -> dict:
    _paced(conn, config, upstream, "warmup", WARMUP, LOW_LOAD_GAP)
    idle = _summary(_paced(conn, config, upstream, "idle", LOW_LOAD_SAMPLES, LOW_LOAD_GAP))
    _write_outcomes(conn, [f"old-{n}" for n in range(REPORTED_ROWS)], time.time(), True)
    loaded = _summary(_paced(conn, config, upstream, "loaded", LOW_LOAD_SAMPLES, LOW_LOAD_GAP))
    count = int(FLOW_RATE * FLOW_SECONDS)
    flow = _paced(conn, config, upstream, "flow", count, 1 / FLOW_RATE)
    flow_summary = {**_summary(flow), "requests": len(upstream.answered())}
    return {
        "idle_db": idle,
        "db_with_reported_rows": {**loaded, "reported_rows": REPORTED_ROWS},
        "flow_500_per_s": flow_summary,
        "backlog": {"rows": BACKLOG, "rows_per_s": round(_drain_rate(conn, config, upstream))},
    }


def _verdict(figures: dict) -> dict:
    measured = {
        "idle_p50_ms": figures["idle_db"]["p50_ms"],
        "idle_p99_ms": figures["idle_db"]["p99_ms"],
        "loaded_p50_ms": figures["db_with_reported_rows"]["p50_ms"],
        "loaded_p99_ms": figures["db_with_reported_rows"]["p99_ms"],
        "flow_500_per_s_p50_ms": figures["flow_500_per_s"]["p50_ms"],
    }
    met = {key: value <= TARGETS[key] for key, value in measured.items()}
    met["backlog_rows_per_s"] = figures["backlog"]["rows_per_s"] >= TARGETS["backlog_rows_per_s"]
    return {"targets": TARGETS, "targets_met": met}


def run() -> dict:
    """Start a reporter and an upstream in a private var dir; measure; stop both."""
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, Upstream() as upstream:
        var_dir, ini = Path(tmp) / "var", Path(tmp) / "asyncmail.ini"
        var_dir.mkdir()
        ini.write_text("[delivery]\nclient_sync_idle_seconds = 0\n")
        config = load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(var_dir)})
        conn = store.db.connect(config.database, config.synchronous)
        env = procs.service_env(var_dir, ini, client_sync_url=upstream.url)
        proc = procs.start("reporter", env, Path(tmp) / "reporter.log")
        try:
            wake_dir = wakeup.wake_dir(config.run_dir)
            procs.wait_for(lambda: any(wake_dir.glob("reporter-*.sock")), timeout=30)
            figures = _measure(conn, config, upstream)
        finally:
            procs.stop(proc)
            conn.close()
    return {**figures, **_verdict(figures)}
