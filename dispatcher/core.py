"""One dispatcher iteration: claim -> fetch attachments and build MIME -> reserve a rate slot
-> send -> record.  ``main()`` in ``__main__`` loops on ``Dispatcher.run_once``.

Everything with a side effect (database, SMTP pool, attachment fetcher, rate-limit ledger,
clock, randomness) enters through the constructor, so tests step the loop with real peers.
Whatever goes wrong with one message becomes that message's recorded outcome; the batch
goes on with the next one.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import apsw

from common import crypto, metrics, store, wakeup
from common.config import Config
from common.enums import FINAL_NEXT, Next, Outcome
from common.logs import fields
from common.ratelimit import Limits
from common.store.claims import Attempt, Claim, Transition
from dispatcher import bounces, mime, payload
from dispatcher.attachments import AttachmentError
from dispatcher.smtp import Endpoint, Phase, Result

logger = logging.getLogger(__name__)

JITTER = 0.10  # retry delays vary ±10 % so a burst of failures does not retry in lockstep
REPORT_NUDGE_EVERY = 0.02  # seconds: wake the reporter at most this often within a batch
# Outcomes are committed in groups of up to OUTCOME_GROUP spanning at most
# OUTCOME_GROUP_SECONDS of sending, and always at the end of a claim: a commit per message
# costs more CPU than the SMTP transaction to a nearby relay.  A dispatcher killed outright
# may resend that many messages (same Message-ID), flagged possible_duplicate (maybe_sent).
OUTCOME_GROUP = 8
OUTCOME_GROUP_SECONDS = 0.01
# Group commits run at synchronous=NORMAL (no fsync; a killed process loses nothing that was
# committed, only power loss can) and one commit at the configured level (FULL) at least
# this often, and the last of every claim, makes every earlier one durable too.
OUTCOME_SYNC_EVERY = 0.05
RELAXED_LEVELS = {"FULL", "EXTRA"}  # levels above NORMAL, which outcome commits may relax
# consecutive temporary failures of one account before it is logged as failing: a greylisted
# message is not an outage, a refused connection for every message is
FAILING_AFTER = 3
TRANSIENT = frozenset({Outcome.TEMPORARY, Outcome.UNCERTAIN})


class Dispatcher:
    """Claims ready messages and delivers them, one claim per ``run_once``."""

    def __init__(
        self,
        conn,
        config: Config,
        *,
        ledger,
        pool,
        fetcher,
        name: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        heartbeat: Callable[[], None] = lambda: None,
    ):
        self.conn, self.config = conn, config
        self.ledger, self.pool, self.fetcher = ledger, pool, fetcher
        self.name, self.owner = name, f"{name}:{os.getpid()}"
        self.clock, self.rng = clock, rng or random.Random()
        self.should_stop, self.heartbeat = should_stop, heartbeat  # checked between messages
        self.next_ready: float | None = None
        self.run_now_seen = store.settings.run_now_at(conn)
        self.draining = False  # test_mode: a run-now was seen; claim until the queue is dry
        self._pending: list[Transition] = []  # outcomes not yet committed
        self._accounts: dict[str | None, tuple] = {}  # id -> (row snapshot, Endpoint, Limits)
        self._unreported = 0  # terminal outcomes committed since the reporter was woken
        self._failures: dict[str, int] = {}  # account label -> temporary failures in a row
        self._nudged = self._synced = 0.0
        if config.synchronous in RELAXED_LEVELS:
            store.db.set_synchronous(conn, "NORMAL")
        conn.set_busy_handler(store.claims.BusyWait())

    def reconfigure(self, config: Config) -> None:
        """Adopt a re-read configuration (SIGHUP); the pool reconnects where it changed."""
        self.config = config
        self.fetcher.config = config
        self._accounts.clear()  # the default account comes from [smtp]

    # -- the iteration ------------------------------------------------------------------------
    def turn(self) -> bool:
        """``run_once`` now; a database error (disk full, locked too long) is logged, then sleep."""
        try:
            return self.run_once(self.clock())
        except apsw.Error:
            logger.exception(fields(event="turn_failed"))
            return False

    def run_once(self, now: float) -> bool:
        """Claim and deliver one batch; False when nothing was ready (the caller may sleep)."""
        if not self._may_claim():
            self.next_ready = None
            return False
        claim = store.claims.claim(
            self.conn,
            self.owner,
            now,
            self.config.lease_seconds,
            self.config.batch_size_per_account,
            self.config.has_default_account,
            sending_ahead=OUTCOME_GROUP,
        )
        if not claim.messages:
            self.draining = False
            ids = [*claim.accounts, *([None] if self.config.has_default_account else [])]
            self.next_ready = store.claims.next_ready_at(self.conn, ids)
            return False
        self._deliver_claim(claim)
        return True

    def idle_seconds(self) -> float:
        """How long to sleep when idle: the poll interval, or less if a row is due sooner."""
        wait = self.config.send_interval_seconds
        if self.next_ready is not None:
            wait = min(wait, max(0.0, self.next_ready - self.clock()))
        return wait

    def _may_claim(self) -> bool:
        if not store.settings.is_active(self.conn, self.config.active):
            return False  # suspended: reporting goes on, sending does not
        if not self.config.test_mode or self.draining:
            return True
        run_now = store.settings.run_now_at(self.conn)
        if run_now > self.run_now_seen:
            self.run_now_seen, self.draining = run_now, True
        return self.draining

    def _deliver_claim(self, claim: Claim) -> None:
        held: dict[str | None, float] = {}  # rate-limited account -> when a slot frees
        skipped: dict[str | None, list[str]] = {}
        lease_expires = claim.lease_expires
        for index, row in enumerate(claim.messages):
            if self.should_stop():  # SIGTERM: the message in hand is done; give back the rest
                self._commit()
                rest = [r["id"] for r in claim.messages[index:]]
                store.claims.release(self.conn, rest, self.owner, self.clock())
                return
            self.heartbeat()  # a long batch to a slow server must not look like a dead process
            account_id = row["account_id"]
            if account_id in held:
                skipped.setdefault(account_id, []).append(row["id"])
                continue
            self._commit(only_if_due=True, upcoming=(claim.messages[index:], held))
            lease_expires = self._keep_lease(claim.messages[index:], lease_expires)
            transition = self._attempt(row, claim.accounts.get(account_id))
            self._pending.append(transition)
            self._count(row, transition)
            if transition.attempt.outcome == Outcome.DEFERRED:
                held[account_id] = transition.ready_at
        self._commit()
        for account_id, ids in skipped.items():
            store.claims.release(
                self.conn, ids, self.owner, self.clock(), ready_at=held[account_id]
            )

    def _commit(self, only_if_due: bool = False, upcoming: tuple | None = None) -> None:
        """Record pending outcomes in one transaction; with only_if_due, once the group is full.

        ``upcoming`` = (rows still to go, held accounts): the next OUTCOME_GROUP rows that may
        be sent before the following commit are marked maybe_sent in the same transaction.
        """
        if not self._pending:
            return
        now = self.clock()
        # measured from the start of the oldest pending send: slow sends commit one by one
        young = now - self._pending[0].attempt.ts < OUTCOME_GROUP_SECONDS
        if only_if_due and young and len(self._pending) < OUTCOME_GROUP:
            return
        sync_due = not only_if_due or now - self._synced >= OUTCOME_SYNC_EVERY
        ahead = None
        if upcoming is not None:
            rows, held = upcoming
            ids = [r["id"] for r in rows if r["account_id"] not in held][:OUTCOME_GROUP]
            ahead = (self.owner, ids)
        store.claims.record(
            self.conn, self._pending, self.name, self._durable(sync_due), sending_next=ahead
        )
        self._unreported += sum(t.state in FINAL_NEXT for t in self._pending)
        self._pending = []
        self._nudge_reporter(force=not only_if_due)

    def _durable(self, due: bool) -> str | None:
        """The synchronous level for a commit that makes every earlier one durable, or None."""
        if not due or self.config.synchronous not in RELAXED_LEVELS:
            return None
        self._synced = self.clock()
        return self.config.synchronous

    def _keep_lease(self, remaining: list[dict], lease_expires: float) -> float:
        """Extend the lease of the rows still to send once half of it has run out."""
        now = self.clock()
        if now < lease_expires - self.config.lease_seconds / 2:
            return lease_expires
        expires = now + self.config.lease_seconds
        store.claims.extend_lease(self.conn, [r["id"] for r in remaining], self.owner, expires)
        return expires

    # -- one message --------------------------------------------------------------------------
    def _attempt(self, row: dict, account: dict | None) -> Transition:
        """Build, reserve, send; every failure becomes the message's transition."""
        started = self.clock()
        try:
            envelope, endpoint, limits = self._prepare(row, account)
        except AttachmentError as exc:
            outcome = Outcome.PERMANENT if exc.final else Outcome.TEMPORARY
            return self._after(
                row, Result(outcome, Phase.CONNECT, None, f"attachment {exc}"), started, None
            )
        except (mime.BuildError, crypto.SecretError) as exc:
            outcome = Outcome.PERMANENT if isinstance(exc, mime.BuildError) else Outcome.TEMPORARY
            return self._after(row, Result(outcome, Phase.CONNECT, None, str(exc)), started, None)
        except Exception as exc:
            logger.exception(fields(event="build_failed", id=row["id"]))
            result = Result(Outcome.TEMPORARY, Phase.CONNECT, None, f"internal error: {exc!r}")
            return self._after(row, result, started, None)
        envelope, suppressed = bounces.screen(self.conn, envelope, self.config)
        if not envelope.recipients:
            return bounces.all_suppressed(row, suppressed, self.clock())
        try:
            free_at = (
                self.ledger.reserve(row["account_id"], limits, self.clock()) if limits else None
            )
        except Exception as exc:  # the ledger file cannot be used: never send unmetered
            logger.exception(fields(event="ledger_failed", account=_label(row["account_id"])))
            result = Result(Outcome.TEMPORARY, Phase.CONNECT, None, f"rate-limit ledger: {exc!r}")
            return self._after(row, result, started, None)
        if free_at is not None:
            return self._held_back(row, account, free_at)
        return self._send(row, envelope, endpoint, suppressed)

    def _prepare(self, row: dict, account: dict | None) -> tuple[mime.Envelope, Endpoint, Limits]:
        if account is None and row["account_id"] is not None:
            raise mime.BuildError(f"account {row['account_id']!r} no longer exists")
        endpoint, limits = self._account(row["account_id"], account)
        msg = payload.load(row["payload"])
        parts = self.fetcher.fetch_all(msg.attachments or [])
        envelope = mime.build(msg, parts, self.clock(), row["message_id_header"])
        return bounces.with_verp(envelope, row, msg, self.config), endpoint, limits

    def _account(self, account_id: str | None, row: dict | None) -> tuple[Endpoint, Limits]:
        """Endpoint and limits of an account, rebuilt only when its row changed."""
        snapshot = tuple(row.values()) if row is not None else ()
        cached = self._accounts.get(account_id)
        if cached is None or cached[0] != snapshot:
            if row is None:
                endpoint = Endpoint.from_config(self.config)
            else:
                endpoint = Endpoint.from_account(row, self.config.secret_key)
            cached = (snapshot, endpoint, Limits.from_account(row))
            self._accounts[account_id] = cached
        return cached[1], cached[2]

    def _send(
        self, row: dict, envelope: mime.Envelope, endpoint: Endpoint, suppressed: list[str]
    ) -> Transition:
        start = self.clock()
        try:
            result = self.pool.send(
                row["account_id"], endpoint, envelope.sender, envelope.recipients, envelope.data
            )
        except Exception as exc:  # a bug, not a server answer: the link's state is unknown
            logger.exception(fields(event="send_failed", id=row["id"]))
            self.pool.discard(row["account_id"])
            result = Result(Outcome.UNCERTAIN, Phase.REPLY, None, f"internal error: {exc!r}")
        duration = self.clock() - start
        metrics.SMTP_SEND_SECONDS.labels(_label(row["account_id"])).observe(duration)
        result = bounces.after_send(self.conn, row, result, suppressed, self.config, self.clock())
        return self._after(row, result, start, duration)

    def _held_back(self, row: dict, account: dict, free_at: float) -> Transition:
        now = self.clock()
        metrics.RATE_LIMITED.labels(_label(row["account_id"])).inc()
        if account.get("limit_behavior") == "reject":
            attempt = self._attempt_row(row, now, Outcome.REJECTED, None, "rate limit exceeded")
            return Transition(attempt, Next.ERROR, now, error="rate limit exceeded")
        detail = f"rate limit: next slot in {free_at - now:.3f}s"
        attempt = self._attempt_row(row, now, Outcome.DEFERRED, None, detail)
        return Transition(attempt, Next.DEFERRED, now, ready_at=free_at)

    def _after(self, row: dict, result: Result, start: float, duration: float | None):
        """The transition an SMTP result (or a failure before SMTP) leads to."""
        now = self.clock()
        attempt = self._attempt_row(
            row, start, result.outcome, result.code, result.detail, duration
        )
        if result.outcome is Outcome.SENT:  # SENDING -> SENT
            return Transition(attempt, Next.SENT, now, refused=result.refused or None)
        if result.outcome is Outcome.PERMANENT:  # SENDING -> ERROR
            return Transition(attempt, Next.ERROR, now, error=result.detail)
        uncertain = result.outcome is Outcome.UNCERTAIN
        done = row["attempts"] + 1
        if done > self.config.max_retries:  # SENDING -> ERROR: retries exhausted
            error = f"{result.detail} (gave up after {done} attempts)"
            return Transition(attempt, Next.ERROR, now, error=error, possible_duplicate=uncertain)
        # SENDING -> DEFERRED: retry later; an uncertain send waits at least the 2nd delay
        ready_at = now + self.retry_delay(done, uncertain)
        return Transition(
            attempt,
            Next.RETRY,
            now,
            ready_at=ready_at,
            error=result.detail,
            possible_duplicate=uncertain,
        )

    def retry_delay(self, attempts_done: int, uncertain: bool = False) -> float:
        """Seconds before the next try after ``attempts_done`` attempts (last delay repeats)."""
        delays = self.config.retry_delays
        delay = delays[min(attempts_done, len(delays)) - 1] * self.rng.uniform(
            1 - JITTER, 1 + JITTER
        )
        if uncertain:  # it may have been delivered: never sooner than the second delay
            delay = max(delay, delays[min(1, len(delays) - 1)])
        return delay

    def _attempt_row(self, row, ts, outcome, code, detail, duration=None) -> Attempt:
        return Attempt(row["id"], row["account_id"], ts, outcome, code, detail, duration)

    # -- bookkeeping --------------------------------------------------------------------------
    def _count(self, row: dict, transition: Transition) -> None:
        account, attempt = _label(row["account_id"]), transition.attempt
        metrics.ATTEMPTS.labels(account, attempt.outcome).inc()
        if transition.state is Next.SENT:
            metrics.SENT.labels(account).inc()
            metrics.ENQUEUE_TO_SENT_SECONDS.labels(account).observe(
                max(0.0, transition.now - row["enqueued_at"])
            )
        elif transition.state is Next.ERROR:
            metrics.ERRORS.labels(account).inc()
        else:
            metrics.DEFERRED.labels(account).inc()
        self._note_health(account, attempt)
        if self.config.delivery_activity:
            logger.info(
                fields(
                    event="attempt",
                    id=row["id"],
                    account=account,
                    outcome=attempt.outcome,
                    state=transition.state,
                    code=attempt.smtp_code or "",
                    attempt=row["attempts"] + 1,
                    duration=f"{attempt.duration or 0:.4f}",
                    detail=attempt.detail,
                )
            )

    def _note_health(self, account: str, attempt: Attempt) -> None:
        """One line when an account starts failing temporarily, one when it sends again."""
        if attempt.outcome in TRANSIENT:
            failures = self._failures[account] = self._failures.get(account, 0) + 1
            if failures == FAILING_AFTER:  # OK -> FAILING
                logger.warning(
                    fields(
                        event="account_failing",
                        account=account,
                        failures=failures,
                        code=attempt.smtp_code or "",
                        detail=attempt.detail,
                    )
                )
        elif attempt.outcome is Outcome.SENT:
            failures = self._failures.pop(account, 0)
            if failures >= FAILING_AFTER:  # FAILING -> OK
                logger.info(fields(event="account_recovered", account=account, failures=failures))

    def _nudge_reporter(self, force: bool = False) -> None:
        """Wake the reporter after terminal outcomes, at most every REPORT_NUDGE_EVERY."""
        now = self.clock()
        if self._unreported and (force or now - self._nudged >= REPORT_NUDGE_EVERY):
            wakeup.notify(self.config.run_dir, wakeup.REPORTER)
            self._unreported, self._nudged = 0, now

    def close(self) -> None:
        """Close pooled SMTP connections (shutdown)."""
        self.pool.close()


def _label(account_id: str | None) -> str:
    return "default" if account_id is None else account_id
