"""One reporter iteration: checkpoint and purge when due, then post one batch of reports.

The reporter also keeps the database's WAL short (``CHECKPOINT_EVERY``), so that the
dispatchers' claims and the API's enqueues never pay for a checkpoint (common/store/db.py).

States of the upstream, as the reporter sees it:
  UP        post whenever outcomes wait (woken by the dispatchers), or an empty report
            after ``client_sync_idle_seconds`` of silence (the upstream's heartbeat)
  BACKOFF   a post failed: nothing is marked; the next try waits ``retry_at``, growing
            exponentially with jitter up to BACKOFF_MAX; a run-now tries at once
  UP <- BACKOFF on the first 2xx

Rows are marked reported only after a 2xx, so a crash between the POST and the commit may
repeat a batch but never drops one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import tenacity

from common import metrics, store
from common.config import Config
from common.logs import fields, redact_url
from reporter.body import bounce_item, report_item
from reporter.client import SyncClient

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # longest sleep between turns: keeps the heartbeat fresh; caps a lost wake-up
PURGE_EVERY = 60.0  # seconds between retention purges: retention is counted in days
# seconds between WAL checkpoints: at full speed (thousands of messages a second) the
# dispatchers write ~15 MiB of WAL in this time, far below the automatic checkpoint that
# would otherwise fall on a claim or an enqueue (make bench, scale); idle, one costs ~5 µs
CHECKPOINT_EVERY = 0.25
BACKOFF_MAX = 30.0  # seconds: an upstream back from an outage hears from us within this
BACKOFF = tenacity.wait_exponential_jitter(max=BACKOFF_MAX, jitter=1)  # 1, 2, 4 ... s (+0-1 s)
RUN_NOW_WINDOW = 10.0  # test_mode: seconds a run-now keeps reporting open after the last item


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (tenacity's schedule)."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return BACKOFF(state)


class Reporter:
    """Posts terminal outcomes upstream, marks the acknowledged ones, purges old ones."""

    def __init__(
        self,
        config: Config,
        conn,
        now: float,
        make_client: Callable[[Config], SyncClient | None] = SyncClient.from_config,
    ):
        self.conn, self.make_client = conn, make_client
        self.config, self.client = config, None
        self.failures = 0
        self.retry_at = 0.0  # BACKOFF until this time
        self.last_post_at = now  # the idle report is due client_sync_idle_seconds after this
        self.last_purge_at = 0.0  # purge on the first turn
        self.last_checkpoint_at = 0.0
        self.run_now_seen = store.settings.run_now_at(
            self.conn
        )  # a run-now from before we started is old news
        self.open_until = 0.0  # test_mode: reporting allowed until this time
        for result in metrics.REPORT_RESULTS:  # both series exist before the first request
            metrics.REPORT_BATCHES.labels(result)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Adopt a (re-read) configuration: a new upstream client, the same database."""
        if self.client is not None:
            self.client.close()
        self.config, self.client = config, self.make_client(config)
        if self.client is None:
            logger.info(fields(event="reporting_off", reason="no client_sync_url configured"))
        else:
            logger.info(fields(event="reporting_to", url=redact_url(self.client.url)))

    def run_once(self, now: float) -> bool:
        """Checkpoint and purge when due, post one batch when due; True when more may follow."""
        self._checkpoint_if_due(now)
        self._purge_if_due(now)
        if self.client is None:
            return False
        run_now = self._saw_run_now(now)
        if not run_now and (now < self.retry_at or self._held_by_test_mode(now)):
            return False
        rows = store.reports.fetch_unreported(self.conn, self.config.report_batch_size)
        bounces = store.bounces.fetch_unreported(
            self.conn, self.config.report_batch_size - len(rows)
        )
        if not rows and not bounces and not run_now and not self._idle_report_due(now):
            return False
        return self._post(rows, bounces, now) and bool(rows or bounces)

    def idle_seconds(self, now: float) -> float:
        """How long the loop may sleep when nothing woke it."""
        due = [
            now + POLL_SECONDS,
            self.last_purge_at + PURGE_EVERY,
            self.last_checkpoint_at + CHECKPOINT_EVERY,
        ]
        if self.retry_at > now:
            due.append(self.retry_at)
        elif self.client is not None and self.config.client_sync_idle_seconds:
            due.append(self.last_post_at + self.config.client_sync_idle_seconds)
        return max(0.0, min(due) - now)

    # -- posting -------------------------------------------------------------------------------
    def _post(self, rows: list[dict], bounces: list[dict], now: float) -> bool:
        started = time.monotonic()
        items = [report_item(row, now) for row in rows] + [bounce_item(b) for b in bounces]
        answer = self.client.post(items, now)
        acked = now + (time.monotonic() - started)
        if not answer.ok:
            self._failed(len(items), answer.status, answer.reason, acked)
            return False
        store.reports.mark_reported(self.conn, rows, int(acked))
        store.bounces.mark_reported(self.conn, bounces, int(acked))
        self._succeeded(rows, acked, len(bounces))
        return True

    def _succeeded(self, rows: list[dict], acked: float, bounces: int) -> None:
        if self.failures:  # BACKOFF -> UP
            logger.info(fields(event="report_recovered", failures=self.failures))
        self.failures, self.retry_at, self.last_post_at = 0, 0.0, acked
        if (rows or bounces) and self.config.test_mode:
            self.open_until = acked + RUN_NOW_WINDOW
        metrics.REPORT_BATCHES.labels("ok").inc()
        metrics.REPORT_ITEMS.inc(len(rows) + bounces)
        for row in rows:
            metrics.REPORT_LAG_SECONDS.observe(max(0.0, acked - row["outcome_at"]))
        if self.config.delivery_activity:
            logger.info(fields(event="report_posted", items=len(rows), bounced=bounces))

    def _failed(self, items: int, status: int | None, reason: str, now: float) -> None:
        self.failures += 1  # UP -> BACKOFF, or a longer BACKOFF
        delay = backoff_delay(self.failures)
        self.retry_at = now + delay
        metrics.REPORT_BATCHES.labels("failed").inc()
        logger.warning(
            fields(
                event="report_failed",
                status=status if status is not None else "none",
                reason=reason or "-",
                items=items,
                failures=self.failures,
                retry_in=round(delay, 1),
            )
        )

    # -- when to post --------------------------------------------------------------------------
    def _idle_report_due(self, now: float) -> bool:
        idle = self.config.client_sync_idle_seconds
        return bool(idle) and not self.config.test_mode and now - self.last_post_at >= idle

    def _held_by_test_mode(self, now: float) -> bool:
        return self.config.test_mode and now >= self.open_until

    def _saw_run_now(self, now: float) -> bool:
        """True once per run-now: it posts at once, past any backoff, and opens test_mode."""
        requested = store.settings.run_now_at(self.conn)
        if requested <= self.run_now_seen:
            return False
        self.run_now_seen = requested
        self.open_until = now + RUN_NOW_WINDOW
        return True

    # -- housekeeping ----------------------------------------------------------------------------
    def _checkpoint_if_due(self, now: float) -> None:
        if now - self.last_checkpoint_at < CHECKPOINT_EVERY:
            return
        self.last_checkpoint_at = now
        store.db.checkpoint(self.conn)

    def _purge_if_due(self, now: float) -> None:
        retention = self.config.delivery_report_retention_seconds
        if not retention or now - self.last_purge_at < PURGE_EVERY:
            return
        self.last_purge_at = now
        removed = store.reports.purge_finished(
            self.conn, now - retention, reported_only=self.config.reports_enabled
        )
        if removed:
            logger.info(fields(event="purged", removed=removed, older_than_seconds=retention))
        dropped = store.accounts.drop_tombstones(self.conn)
        if dropped:
            logger.info(fields(event="accounts_dropped", accounts=dropped))

    def close(self) -> None:
        """The loop is over: drop the upstream connection."""
        if self.client is not None:
            self.client.close()
        logger.info(fields(event="stopped"))
