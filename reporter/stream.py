"""One tenant's report stream: its upstream, batches, backoff and idle report.

States of the upstream, as the stream sees it:
  UP        post whenever outcomes wait (woken by the dispatchers), or an empty report
            after ``client_sync_idle_seconds`` of silence (the upstream's heartbeat)
  BACKOFF   a post failed: nothing is marked; the next try waits ``retry_at``, growing
            exponentially with jitter up to BACKOFF_MAX; a run-now tries at once
  UP <- BACKOFF on the first 2xx

Rows are marked reported only after a 2xx, so a crash between the POST and the commit may
repeat a batch but never drops one.  A stream reads and marks its tenant's rows only, with
its own client (connection, timeouts, credentials): one tenant's upstream down or slow
never holds another tenant's reports back (``reporter.threads`` runs each stream in a
thread of its own).
"""

from __future__ import annotations

import logging
import time

import tenacity

from common import metrics, store
from common.config import Config
from common.logs import fields, redact_url
from reporter.body import bounce_item, report_item
from reporter.client import SyncClient

logger = logging.getLogger(__name__)

BACKOFF_MAX = 30.0  # seconds: an upstream back from an outage hears from us within this
BACKOFF = tenacity.wait_exponential_jitter(max=BACKOFF_MAX, jitter=1)  # 1, 2, 4 ... s (+0-1 s)
RUN_NOW_WINDOW = 10.0  # test_mode: seconds a run-now keeps reporting open after the last item
IDLE_FOREVER = 3600.0  # seconds a stream without an upstream sleeps between looks (it is woken)


def backoff_delay(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (tenacity's schedule)."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return BACKOFF(state)


class Stream:
    """Posts one tenant's terminal outcomes to its upstream and marks the acknowledged ones.

    ``config`` is the service's configuration with the tenant's report settings as its
    [client] keys (``reporter.reporter.tenant_config``).
    """

    def __init__(self, tenant: str, config: Config, conn, now: float, client: SyncClient | None):
        self.tenant, self.config, self.conn, self.client = tenant, config, conn, client
        self.failures = 0
        self.retry_at = 0.0  # BACKOFF until this time
        self.last_post_at = now  # the idle report is due client_sync_idle_seconds after this
        self.run_now_seen = store.settings.run_now_at(conn, tenant)  # older ones are old news
        self.open_until = 0.0  # test_mode: reporting allowed until this time
        for result in metrics.REPORT_RESULTS:  # the series exist before the first request
            metrics.REPORT_BATCHES.labels(tenant, result)
        metrics.REPORT_ITEMS.labels(tenant)
        if client is None:
            logger.info(fields(event="reporting_off", tenant=tenant,
                               reason="no client_sync_url configured"))  # fmt: skip
        else:
            logger.info(fields(event="reporting_to", tenant=tenant, url=redact_url(client.url)))

    def run_once(self, now: float) -> bool:
        """Post one batch when due; True when more may follow at once."""
        if self.client is None:
            return False
        run_now = self._saw_run_now(now)
        if not run_now and (now < self.retry_at or self._held_by_test_mode(now)):
            return False
        limit = self.config.report_batch_size
        rows = store.reports.fetch_unreported(self.conn, self.tenant, limit)
        bounces = store.bounces.fetch_unreported(self.conn, self.tenant, limit - len(rows))
        if not rows and not bounces and not run_now and not self._idle_report_due(now):
            return False
        return self._post(rows, bounces, now) and bool(rows or bounces)

    def idle_seconds(self, now: float) -> float:
        """How long this stream may sleep when nothing woke it."""
        if self.client is None:
            return IDLE_FOREVER
        if self.retry_at > now:
            return self.retry_at - now
        idle = self.config.client_sync_idle_seconds
        if idle and not self.config.test_mode:
            return max(0.0, self.last_post_at + idle - now)
        return IDLE_FOREVER

    # -- posting -------------------------------------------------------------------------------
    def _post(self, rows: list[dict], bounces: list[dict], now: float) -> bool:
        started = time.monotonic()
        items = [report_item(row, now, self.tenant) for row in rows]
        items += [bounce_item(b, self.tenant) for b in bounces]
        answer = self.client.post(items, now)
        acked = now + (time.monotonic() - started)
        if not answer.ok:
            self._failed(len(items), answer.status, answer.reason, acked)
            return False
        store.reports.mark_reported(self.conn, self.tenant, rows, int(acked))
        store.bounces.mark_reported(self.conn, bounces, int(acked))
        self._succeeded(rows, acked, len(bounces))
        return True

    def _succeeded(self, rows: list[dict], acked: float, bounces: int) -> None:
        if self.failures:  # BACKOFF -> UP
            logger.info(
                fields(event="report_recovered", tenant=self.tenant, failures=self.failures)
            )
        self.failures, self.retry_at, self.last_post_at = 0, 0.0, acked
        if (rows or bounces) and self.config.test_mode:
            self.open_until = acked + RUN_NOW_WINDOW
        metrics.REPORT_BATCHES.labels(self.tenant, "ok").inc()
        metrics.REPORT_ITEMS.labels(self.tenant).inc(len(rows) + bounces)
        for row in rows:
            metrics.REPORT_LAG_SECONDS.observe(max(0.0, acked - row["outcome_at"]))
        if self.config.delivery_activity:
            logger.info(fields(event="report_posted", tenant=self.tenant, items=len(rows),
                               bounced=bounces))  # fmt: skip

    def _failed(self, items: int, status: int | None, reason: str, now: float) -> None:
        self.failures += 1  # UP -> BACKOFF, or a longer BACKOFF
        delay = backoff_delay(self.failures)
        self.retry_at = now + delay
        metrics.REPORT_BATCHES.labels(self.tenant, "failed").inc()
        logger.warning(
            fields(
                event="report_failed",
                tenant=self.tenant,
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
        requested = store.settings.run_now_at(self.conn, self.tenant)
        if requested <= self.run_now_seen:
            return False
        self.run_now_seen = requested
        self.open_until = now + RUN_NOW_WINDOW
        return True

    def close(self) -> None:
        """Drop the upstream connection."""
        if self.client is not None:
            self.client.close()
