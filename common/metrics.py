"""Prometheus metrics shared by every process, and the scrape-time view of the database.

Under supervisord ``PROMETHEUS_MULTIPROC_DIR`` is set before anything imports
prometheus_client, so each process writes its own files and ``render()`` merges them.  The
directory is wiped by the supervisord start command (``asyncmail supervisord``), never by a
program: a restarted dispatcher would erase everyone's counters.  Gauges that describe the
queue are read from the database at scrape time (``QueueCollector``), so they are exact
whichever process answers the scrape.

Gauge modes, chosen on purpose:
  HEARTBEAT  ``max``: a timestamp per process name; a restarted process (new pid, same name)
             overtakes its predecessor's value, and a dead one keeps its last beat, which is
             exactly what "when did dispatcher-01 last work" should show.
A process that exits calls ``mark_dead(os.getpid())`` (gunicorn's ``child_exit`` does it for
web workers, ``at_exit()`` for dispatchers and the reporter) so ``live*`` gauges forget it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

# -- the reference's names ------------------------------------------------------------------
SENT = Counter("asyncmail_sent", "Messages accepted by the SMTP server.", ["account_id"])
ERRORS = Counter("asyncmail_errors", "Messages that failed permanently.", ["account_id"])
DEFERRED = Counter("asyncmail_deferred", "Messages deferred (retry or rate limit).", ["account_id"])
RATE_LIMITED = Counter(
    "asyncmail_rate_limited", "Sends held back by an account rate limit.", ["account_id"]
)
# asyncmail_pending_messages is a scrape-time gauge, see QueueCollector.
REFERENCE_NAMES = (  # as exposed; existing dashboards and alerts of the reference use these
    "asyncmail_sent_total",
    "asyncmail_errors_total",
    "asyncmail_deferred_total",
    "asyncmail_rate_limited_total",
    "asyncmail_pending_messages",
)

# -- ours -----------------------------------------------------------------------------------
ATTEMPTS = Counter("asyncmail_attempts", "Delivery attempts by outcome.", ["account_id", "outcome"])
SMTP_SEND_SECONDS = Histogram(
    "asyncmail_smtp_send_seconds",
    "Time of one SMTP transaction (MAIL FROM to end of DATA).",
    ["account_id"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUE_TO_SENT_SECONDS = Histogram(
    "asyncmail_enqueue_to_sent_seconds",
    "Time from enqueue to the SMTP server's acceptance.",
    ["account_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
)
CIRCUIT_OPENED = Counter(
    "asyncmail_circuit_opened",
    "Account circuits opened by a connection failure (claims of it pause for a backoff).",
    ["account_id"],
)
REPORT_BATCHES = Counter("asyncmail_report_batches", "proxy_sync requests by result.", ["result"])
REPORT_ITEMS = Counter("asyncmail_report_items", "Delivery report items acknowledged.")
REPORT_LAG_SECONDS = Histogram(
    "asyncmail_report_lag_seconds",
    "Time from a message's outcome to its acknowledged report.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600),
)
HTTP_REQUESTS = Counter(
    "asyncmail_http_requests", "API requests by route and status code.", ["route", "code"]
)
HTTP_SECONDS = Histogram(
    "asyncmail_http_request_seconds",
    "API request duration by route.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
HEARTBEAT = Gauge(
    "asyncmail_process_heartbeat_timestamp_seconds",
    "Last loop iteration of each dispatcher and reporter process.",
    ["process"],
    multiprocess_mode="max",
)


class QueueCollector:
    """Gauges computed from the database at scrape time."""

    def __init__(self, connect, clock: Callable[[], float] = time.time):
        self.connect = connect  # () -> apsw connection, opened lazily by the caller
        self.clock = clock  # ages are "now" minus a stored time; a test passes a fixed clock

    def collect(self):
        from common import store

        conn = self.connect()
        now = self.clock()
        counts = store.messages.status_counts(conn, now)
        pending = counts["queued"] + counts["deferred"] + counts["sending"]
        yield GaugeMetricFamily(
            "asyncmail_pending_messages", "Messages not yet sent or failed.", value=pending
        )
        by_status = GaugeMetricFamily(
            "asyncmail_messages", "Stored messages by status.", labels=["status"]
        )
        for status, n in counts.items():
            by_status.add_metric([status], n)
        yield by_status
        by_priority = GaugeMetricFamily(
            "asyncmail_pending_by_priority", "Unsent messages by priority.", labels=["priority"]
        )
        for priority, n in store.messages.pending_by_priority(conn).items():
            by_priority.add_metric([str(priority)], n)
        yield by_priority
        yield GaugeMetricFamily(
            "asyncmail_oldest_ready_age_seconds",
            "How long the oldest claimable message has waited.",
            value=store.messages.oldest_ready_age(conn, now),
        )
        beats = GaugeMetricFamily(
            "asyncmail_heartbeat_age_seconds",
            "Seconds since each process's last recorded heartbeat.",
            labels=["process", "kind"],
        )
        for beat in store.heartbeats.list_all(conn, now):
            beats.add_metric([beat["process"], beat["kind"]], beat["age_seconds"])
        yield beats
        yield GaugeMetricFamily(
            "asyncmail_oldest_unreported_age_seconds",
            "How long the oldest outcome has waited for its delivery report.",
            value=store.reports.oldest_unreported_age(conn, now),
        )


def render(connect, clock: Callable[[], float] = time.time) -> bytes:
    """The text exposition: every process's counters plus the database gauges at ``clock()``."""
    queue = CollectorRegistry()
    queue.register(QueueCollector(connect, clock))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged) + generate_latest(queue)
    return generate_latest(REGISTRY) + generate_latest(queue)


def mark_dead(pid: int) -> None:
    """Tell multiprocess mode a process is gone (its live gauges stop counting)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def at_exit() -> None:
    """Call once when a dispatcher or the reporter leaves its loop, before it exits."""
    mark_dead(os.getpid())
