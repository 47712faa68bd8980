"""Prometheus metrics shared by every process, and the scrape-time view of the database.

Under supervisord ``PROMETHEUS_MULTIPROC_DIR`` is set before anything imports
prometheus_client, so each process writes its own files and ``render()`` merges them.  The
directory is wiped by the supervisord start command (``asyncmail supervisord``), never by a
program: a restarted dispatcher would erase everyone's counters.  Gauges that describe the
queue are read from the database at scrape time (``QueueCollector``), so they are exact
whichever process answers the scrape.

Per-account series exist from the moment the account does: every scrape gives each account
(and ``default``) its series at 0 before the first event, so ``rate()`` and ``increase()``
see a first burst, and drops the series of deleted accounts (multiprocess files cannot
forget a label set, so the scrape filters them out).  Account ids are unique within a
tenant only, so these series carry ``tenant_id`` beside ``account_id`` (docs/tenants.md);
a query written before tenants still sums or matches them as it did.

Gauge modes, chosen on purpose:
  HEARTBEAT  ``max``: a timestamp per process name; a restarted process (new pid, same name)
             overtakes its predecessor's value, and a dead one keeps its last beat, which is
             exactly what "when did dispatcher-01 last work" should show.
  PROCESS_*  ``livesum``: memory, open files and the number of processes of each kind, summed
             over the live processes of that kind (a dead process stops counting).
A process that exits calls ``mark_dead(os.getpid())`` (gunicorn's ``child_exit`` does it for
web workers, ``at_exit()`` for dispatchers and the reporter) so ``live*`` gauges forget it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from collections.abc import Callable

from prometheus_client import (
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from common.enums import DEFAULT_TENANT, Outcome

DEFAULT_ACCOUNT = "default"  # account_id label of the implicit [smtp] account, as in the reference
ACCOUNT = ["tenant_id", "account_id"]  # the labels that name an account

# -- the reference's names ------------------------------------------------------------------
SENT = Counter("asyncmail_sent", "Messages accepted by the SMTP server.", ACCOUNT)
ERRORS = Counter("asyncmail_errors", "Messages that failed permanently.", ACCOUNT)
DEFERRED = Counter("asyncmail_deferred", "Messages deferred (retry or rate limit).", ACCOUNT)
RATE_LIMITED = Counter(
    "asyncmail_rate_limited", "Sends held back by an account or tenant rate limit.", ACCOUNT
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
ATTEMPTS = Counter("asyncmail_attempts", "Delivery attempts by outcome.", [*ACCOUNT, "outcome"])
SMTP_SEND_SECONDS = Histogram(
    "asyncmail_smtp_send_seconds",
    "Time of one SMTP transaction (MAIL FROM to end of DATA).",
    ACCOUNT,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUE_TO_SENT_SECONDS = Histogram(
    "asyncmail_enqueue_to_sent_seconds",
    "Time from enqueue to the SMTP server's acceptance.",
    ACCOUNT,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
)
CIRCUIT_OPENED = Counter(
    "asyncmail_circuit_opened",
    "Account circuits opened by a connection failure (claims of it pause for a backoff).",
    ACCOUNT,
)
REPORT_BATCHES = Counter(
    "asyncmail_report_batches", "proxy_sync requests by tenant and result.", ["tenant_id", "result"]
)
REPORT_RESULTS = ("ok", "failed")
REPORT_ITEMS = Counter(
    "asyncmail_report_items", "Delivery report items acknowledged, by tenant.", ["tenant_id"]
)
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
BOUNCES = Counter(
    "asyncmail_bounces",
    "Delivery status notifications about sent messages, and complaints, by kind.",
    [*ACCOUNT, "kind"],
)
BOUNCE_KINDS = ("hard", "soft", "complaint")
BOUNCE_MAILS = Counter(
    "asyncmail_bounce_mails",
    "Mails of the bounce mailbox handled, by result (processed or unmatched).",
    ["result"],
)
BOUNCE_MAIL_RESULTS = ("processed", "unmatched")
BOUNCE_MAILBOX_FAILURES = Counter(
    "asyncmail_bounce_mailbox_failures",
    "Connections to the bounce mailbox, or commands on it, that failed.",
)
SUPPRESSED_RECIPIENTS = Counter(
    "asyncmail_suppressed_recipients",
    "Recipients not sent to because they are on the suppression list.",
    ACCOUNT,
)
HEARTBEAT = Gauge(
    "asyncmail_process_heartbeat_timestamp_seconds",
    "Last loop iteration of each dispatcher and reporter process.",
    ["process"],
    multiprocess_mode="max",
)

# Every label set of these exists at 0 for each account (ACCOUNT_LABELS: the other labels'
# values), so the first event of an account is an increase, not the birth of a series.
ACCOUNT_LABELS = {
    SENT: (),
    ERRORS: (),
    DEFERRED: (),
    RATE_LIMITED: (),
    ATTEMPTS: tuple((outcome.value,) for outcome in Outcome),
    SMTP_SEND_SECONDS: (),
    ENQUEUE_TO_SENT_SECONDS: (),
    BOUNCES: tuple((kind,) for kind in BOUNCE_KINDS),
    SUPPRESSED_RECIPIENTS: (),
}
ACCOUNT_FAMILIES = frozenset(metric.describe()[0].name for metric in ACCOUNT_LABELS)

# -- processes ------------------------------------------------------------------------------
# prometheus_client's own process collector reads only the process that answers the scrape;
# these series cover every process, by kind (web, dispatcher, reporter), and replace it.
REGISTRY.unregister(PROCESS_COLLECTOR)
PROCESSES = Gauge(
    "asyncmail_processes", "Live processes of each kind.", ["kind"], multiprocess_mode="livesum"
)
PROCESS_RSS = Gauge(
    "process_resident_memory_bytes",
    "Resident memory of the live processes of each kind, summed.",
    ["kind"],
    multiprocess_mode="livesum",
)
PROCESS_OPEN_FDS = Gauge(
    "process_open_fds",
    "Open file descriptors of the live processes of each kind, summed.",
    ["kind"],
    multiprocess_mode="livesum",
)
PROCESS_CPU = Counter(
    "process_cpu_seconds", "User and system CPU time of every process of each kind.", ["kind"]
)
PROCESS_SAMPLE_EVERY = 5.0  # seconds: memory and file counts move slowly; a sample costs ~30 µs


@functools.cache
def build_labels() -> dict[str, str]:
    """asyncmail_build_info's labels, read at the first scrape (importlib.metadata is big)."""
    from importlib import metadata

    try:
        version = metadata.version("async-mail-service")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    return {"version": version, "python": platform.python_version()}


class ProcessSampler:
    """Updates this process's ``process_*`` series, at most every PROCESS_SAMPLE_EVERY."""

    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic):
        self.kind, self.clock = kind, clock
        self.last = -PROCESS_SAMPLE_EVERY
        self.cpu = 0.0  # CPU seconds already counted
        PROCESSES.labels(kind).set(1)

    def __call__(self) -> None:
        now = self.clock()
        if now - self.last < PROCESS_SAMPLE_EVERY:
            return
        self.last = now
        times = os.times()
        cpu = times.user + times.system
        PROCESS_CPU.labels(self.kind).inc(max(0.0, cpu - self.cpu))
        self.cpu = cpu
        with contextlib.suppress(OSError):  # /proc is Linux's; elsewhere these stay unset
            with open("/proc/self/statm") as statm:
                pages = int(statm.read().split()[1])
            PROCESS_RSS.labels(self.kind).set(pages * os.sysconf("SC_PAGE_SIZE"))
            PROCESS_OPEN_FDS.labels(self.kind).set(len(os.listdir("/proc/self/fd")))


# -- the scrape -----------------------------------------------------------------------------
class QueueCollector:
    """Gauges computed from the database and the configuration at scrape time."""

    def __init__(self, connect, config, accounts: set[tuple[str, str]], clock: Callable):
        self.connect = connect  # () -> apsw connection, opened lazily by the caller
        self.config, self.accounts = config, accounts  # accounts: their (tenant, account) labels
        self.clock = clock  # ages are "now" minus a stored time; a test passes a fixed clock

    def collect(self):
        conn = self.connect()
        now = self.clock()
        yield from self._queue(conn, now)
        yield from self._service(conn, now)
        yield from self._replication(now)

    def _queue(self, conn, now: float):
        from common import store  # on the first scrape: the gunicorn master never needs apsw

        counts = store.messages.status_counts(conn, now)
        pending = counts["queued"] + counts["deferred"] + counts["sending"]
        yield GaugeMetricFamily(
            "asyncmail_pending_messages", "Messages not yet sent or failed.", value=pending
        )
        yield _labelled(
            "asyncmail_messages", "Stored messages by status.", "status", counts.items()
        )
        yield _labelled(
            "asyncmail_pending_by_priority",
            "Unsent messages by priority.",
            "priority",
            store.messages.pending_by_priority(conn).items(),
        )
        due = dict.fromkeys(self.accounts, 0)
        for (tenant, account_id), n in store.messages.due_by_account(conn, now).items():
            due[labels_of(tenant, account_id)] = n
        family = GaugeMetricFamily(
            "asyncmail_due_messages",
            "Unsent messages whose time has come: ready now, or waiting to retry a failure.",
            labels=ACCOUNT,
        )
        for series, n in sorted(due.items()):
            family.add_metric(list(series), n)
        yield family
        yield GaugeMetricFamily(
            "asyncmail_oldest_ready_age_seconds",
            "How long the oldest claimable message has waited.",
            value=store.messages.oldest_ready_age(conn, now),
        )
        tenants = store.tenants.list_all(conn)
        yield _labelled(
            "asyncmail_oldest_unreported_age_seconds",
            "How long the oldest outcome of each tenant has waited for its delivery report.",
            "tenant_id",
            [(t["id"], store.reports.oldest_unreported_age(conn, now, t["id"])) for t in tenants],
        )
        yield _labelled(
            "asyncmail_reports_enabled",
            "1 when the tenant's delivery reports are posted (it has a client_sync_url), else 0.",
            "tenant_id",
            [(t["id"], int(self._reports_to(t))) for t in tenants],
        )
        yield _labelled(
            "asyncmail_tenant_sending",
            "1 while the tenant's mail is dispatched (neither it nor the operator suspended it).",
            "tenant_id",
            [(t["id"], int(t["active"] and t["dispatching"])) for t in tenants],
        )

    def _reports_to(self, tenant: dict) -> bool:
        from common import store

        if tenant["id"] == store.tenants.DEFAULT:
            return self.config.reports_enabled
        return tenant["client_sync_url"] is not None

    def _service(self, conn, now: float):
        from common import store

        beats = GaugeMetricFamily(
            "asyncmail_heartbeat_age_seconds",
            "Seconds since each process's last recorded heartbeat.",
            labels=["process", "kind"],
        )
        for beat in store.heartbeats.list_all(conn, now):
            beats.add_metric([beat["process"], beat["kind"]], beat["age_seconds"])
        yield beats
        active = store.settings.is_active(conn, self.config.active)
        yield GaugeMetricFamily(
            "asyncmail_dispatching_enabled",
            "1 while dispatchers claim on their own (active, not test_mode), else 0.",
            value=int(active and not self.config.test_mode),
        )
        yield _labelled(
            "asyncmail_suppressed_addresses",
            "Addresses on the suppression list, by reason.",
            "reason",
            store.suppressions.counts(conn).items(),
        )
        sizes = store.db.file_sizes(self.config.database)
        yield GaugeMetricFamily(
            "asyncmail_database_bytes", "Size of the database file.", value=sizes["database"]
        )
        yield GaugeMetricFamily(
            "asyncmail_database_wal_bytes", "Size of the database's WAL file.", value=sizes["wal"]
        )
        labels = build_labels()
        info = GaugeMetricFamily(
            "asyncmail_build_info", "Version of the service and of Python.", labels=list(labels)
        )
        info.add_metric(list(labels.values()), 1)
        yield info

    def _replication(self, now: float):
        from common import replication

        enabled = self.config.replication_enabled
        yield GaugeMetricFamily(
            "asyncmail_replication_enabled",
            "1 when Litestream replicates the database ([replication] replica_url), else 0.",
            value=int(enabled),
        )
        if not enabled:
            return
        lag = replication.lag(self.config, now)
        yield GaugeMetricFamily(
            "asyncmail_replication_up",
            "1 while Litestream answers and replicates the database, else 0.",
            value=int(lag.up),
        )
        if lag.lag_seconds is not None:  # unknown is absent, never a reassuring 0
            yield GaugeMetricFamily(
                "asyncmail_replication_lag_seconds",
                "At most this many seconds of transactions are not on the replica yet.",
                value=lag.lag_seconds,
            )


class AccountSeries:
    """The per-account families of ``source`` restricted to the accounts that exist."""

    def __init__(self, source, accounts: set[tuple[str, str]]):
        self.source, self.accounts = source, accounts

    def collect(self):
        for family in self.source.collect():
            if family.name in ACCOUNT_FAMILIES:
                family.samples = [
                    s
                    for s in family.samples
                    if (s.labels.get("tenant_id"), s.labels.get("account_id")) in self.accounts
                ]
            yield family


def _labelled(name: str, documentation: str, label: str, values) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values:
        family.add_metric([str(key)], value)
    return family


def account_label(account_id: str | None) -> str:
    """The account_id label of an account (``default``: the implicit [smtp] account)."""
    return DEFAULT_ACCOUNT if account_id is None else account_id


def labels_of(tenant: str, account_id: str | None) -> tuple[str, str]:
    """The (tenant_id, account_id) labels of a tenant's account."""
    return tenant, account_label(account_id)


def account_labels(conn) -> set[tuple[str, str]]:
    """The labels of every account that exists, the [smtp] one (the default tenant's
    ``default``) included."""
    from common import store

    accounts = store.accounts.every_id(conn)
    return {labels_of(DEFAULT_TENANT, None)} | {labels_of(*account) for account in accounts}


def touch_accounts(accounts: set[tuple[str, str]]) -> None:
    """Give every per-account series of these accounts its 0 in this process."""
    for metric, others in ACCOUNT_LABELS.items():
        for account in accounts:
            for rest in others or ((),):
                metric.labels(*account, *rest)


def render(connect, config, clock: Callable[[], float] = time.time) -> bytes:
    """The text exposition: every process's counters plus the database gauges at ``clock()``."""
    accounts = account_labels(connect())
    touch_accounts(accounts)
    queue = CollectorRegistry()
    queue.register(QueueCollector(connect, config, accounts, clock))
    source = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        MultiProcessCollector(source)
    merged = CollectorRegistry()
    merged.register(AccountSeries(source, accounts))
    return generate_latest(merged) + generate_latest(queue)


def mark_dead(pid: int) -> None:
    """Tell multiprocess mode a process is gone (its live gauges stop counting)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def at_exit() -> None:
    """Call once when a dispatcher or the reporter leaves its loop, before it exits."""
    mark_dead(os.getpid())
