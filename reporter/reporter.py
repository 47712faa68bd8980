"""The reporter's main object: housekeeping (WAL checkpoints, the retention purge) and one
report stream per tenant (``reporter.stream``).

The reporter keeps the database's WAL short (``CHECKPOINT_EVERY``), so that the dispatchers'
claims and the API's enqueues never pay for a checkpoint (common/store/db.py).

Streams follow the tenants table: each turn reads every tenant's report settings (a few
rows) and starts, replaces or ends streams to match; the default tenant's upstream is the
[client] section, re-read on SIGHUP (``configure``).  Stepped here (``run_once`` runs
every stream: tests, with a fixed clock), or each in a thread of its own
(``reporter.threads``, the process): then a turn only wakes them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from common import crypto, store
from common.config import Config
from common.enums import DEFAULT_TENANT
from common.logs import fields
from reporter.client import SyncClient
from reporter.stream import Stream

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # longest sleep between turns: keeps the heartbeat fresh; caps a lost wake-up
PURGE_EVERY = 60.0  # seconds between retention purges: retention is counted in days
# seconds between WAL checkpoints: at full speed (thousands of messages a second) the
# dispatchers write ~15 MiB of WAL in this time, far below the automatic checkpoint that
# would otherwise fall on a claim or an enqueue (make bench, scale); idle, one costs ~5 µs
CHECKPOINT_EVERY = 0.25
TARGET_KEYS = (  # a tenant's report settings, as tenants.report_targets reads them
    "client_sync_url",
    "client_sync_user",
    "client_sync_password",
    "client_sync_token",
    "client_sync_signing_key",
    "report_format",
)
SEALED = frozenset({"client_sync_password", "client_sync_token", "client_sync_signing_key"})

MakeClient = Callable[[Config], SyncClient | None]


def tenant_config(config: Config, target: dict) -> Config:
    """The configuration a tenant's stream runs with: the service's, with the tenant's report
    settings (secrets unsealed) as its [client] keys."""
    values = {
        key: crypto.unseal(target[key], config.secret_key) if key in SEALED else target[key]
        for key in TARGET_KEYS
    }
    return dataclasses.replace(config, **values)


class Reporter:
    """Checkpoints, purges, and keeps one report stream per tenant."""

    def __init__(
        self,
        config: Config,
        conn,
        now: float,
        make_client: MakeClient = SyncClient.from_config,
        runner=None,
    ):
        self.conn, self.make_client, self.runner = conn, make_client, runner
        self.config = config
        self.streams: dict[str, Stream] = {}  # stepped here (no runner)
        self.targets: dict[str, tuple] = {}  # each tenant's settings its stream started with
        self.last_purge_at = 0.0  # purge on the first turn
        self.last_checkpoint_at = 0.0
        self.configure(config, now)

    def configure(self, config: Config, now: float | None = None) -> None:
        """Adopt a (re-read) configuration: every stream starts anew with it (the default
        tenant's here, the others at the next turn)."""
        self.config = config
        for tenant in list(self.targets):
            self._stop(tenant)
        self._start(DEFAULT_TENANT, config, self.last_checkpoint_at if now is None else now)

    def stream(self, tenant: str = DEFAULT_TENANT) -> Stream:
        """A stream stepped here (tests look at its state)."""
        return self.streams[tenant]

    def run_once(self, now: float) -> bool:
        """Checkpoint and purge when due, match the streams to the tenants, then step every
        stream (or wake their threads); True when some stream may post again at once."""
        self._checkpoint_if_due(now)
        self._purge_if_due(now)
        self._follow_tenants(now)
        if self.runner is not None:
            self.runner.wake_all()
            return False
        return any([stream.run_once(now) for stream in list(self.streams.values())])

    def idle_seconds(self, now: float) -> float:
        """How long the loop may sleep when nothing woke it."""
        due = [
            now + POLL_SECONDS,
            self.last_purge_at + PURGE_EVERY,
            self.last_checkpoint_at + CHECKPOINT_EVERY,
        ]
        due += [now + stream.idle_seconds(now) for stream in self.streams.values()]
        return max(0.0, min(due) - now)

    # -- the streams ---------------------------------------------------------------------------
    def _follow_tenants(self, now: float) -> None:
        """Start, replace or end the streams of tenants other than the default one."""
        targets = {
            row["id"]: row
            for row in store.tenants.report_targets(self.conn)
            if row["id"] != DEFAULT_TENANT
        }
        for tenant in [t for t in self.targets if t != DEFAULT_TENANT and t not in targets]:
            self._stop(tenant)  # deleted
        for tenant, target in targets.items():
            settings = tuple(target[key] for key in TARGET_KEYS)
            if self.targets.get(tenant) != settings:  # new, or its settings changed
                self._stop(tenant)
                self._start(tenant, self._config_of(tenant, target), now, settings)

    def _config_of(self, tenant: str, target: dict) -> Config:
        try:
            return tenant_config(self.config, target)
        except crypto.SecretError as exc:  # its secrets cannot be read: no reports for it
            logger.error(fields(event="reporting_off", tenant=tenant, reason=exc))
            return dataclasses.replace(self.config, client_sync_url=None)

    def _start(self, tenant: str, config: Config, now: float, settings: tuple = ()) -> None:
        self.targets[tenant] = settings
        if self.runner is not None:
            self.runner.start(tenant, config, self.make_client)
        else:
            self.streams[tenant] = Stream(tenant, config, self.conn, now, self.make_client(config))

    def _stop(self, tenant: str) -> None:
        self.targets.pop(tenant, None)
        if self.runner is not None:
            self.runner.stop(tenant)
        elif tenant in self.streams:
            self.streams.pop(tenant).close()

    # -- housekeeping ----------------------------------------------------------------------------
    def _checkpoint_if_due(self, now: float) -> None:
        if now - self.last_checkpoint_at < CHECKPOINT_EVERY:
            return
        self.last_checkpoint_at = now
        store.db.checkpoint(self.conn)

    def _purge_if_due(self, now: float) -> None:
        """The retention purge (a retention of 0 keeps everything), then the tombstones of
        deleted accounts and tenants whose last messages are gone."""
        if now - self.last_purge_at < PURGE_EVERY:
            return
        self.last_purge_at = now
        retention = self.config.delivery_report_retention_seconds
        if retention:
            silent = store.tenants.without_upstream(self.conn, self.config.reports_enabled)
            removed = store.reports.purge_finished(self.conn, now - retention, silent)
            if removed:
                logger.info(fields(event="purged", removed=removed, older_than_seconds=retention))
        dropped = store.accounts.drop_tombstones(self.conn)
        if dropped:
            logger.info(fields(event="accounts_dropped", accounts=dropped))
        tenants = store.tenants.drop_tombstones(self.conn, now)
        if tenants:
            logger.info(fields(event="tenants_dropped", tenants=tenants))

    def close(self) -> None:
        """The loop is over: end every stream."""
        for tenant in list(self.targets):
            self._stop(tenant)
        logger.info(fields(event="stopped"))
