"""One dispatcher iteration: claim -> fetch attachments and build MIME -> reserve a rate slot
-> send -> record.  ``main()`` in ``__main__`` loops on ``Dispatcher.run_once``.

Everything with a side effect (database, SMTP pool, attachment fetcher, rate-limit ledger,
clock, randomness) enters through the constructor, so tests step the loop with real peers.
Whatever goes wrong with one message becomes that message's recorded outcome; the batch
goes on with the next one.

While a claim is held the guard's thread renews its leases (``dispatcher.leases``) and cuts
any exchange that outlives its deadline (``common.guard``).  A connection failure
opens the account's circuit (``store.circuits``): the rest of its claim goes back at once,
without another connection attempt or attempt row per message, and no dispatcher claims
the account again before the circuit's backoff has passed.

Accounts are named by (tenant, account id) throughout, messages by (tenant, id): ids are
unique within a tenant only (docs/tenants.md).  A tenant with tenant-wide limits has its
sends metered in its own ledger as well as in its account's (``dispatcher.metering``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable

import apsw

from common import crypto, store, wakeup
from common.config import Config
from common.enums import DEFAULT_TENANT, FINAL_NEXT, MAYBE_DELIVERED, Outcome
from common.guard import Guard
from common.logs import fields
from common.store.claims import AccountKey, Claim, Transition, key
from dispatcher import bounces, mime, payload
from dispatcher.attachments import AttachmentError
from dispatcher.circuit import Breaker, reached
from dispatcher.journal import Journal, recover
from dispatcher.leases import Leases
from dispatcher.metering import Metering
from dispatcher.outcomes import AccountHealth, Judge, count, label, series, still_to_send
from dispatcher.pool import Endpoint
from dispatcher.recipients import deliver
from dispatcher.smtp import Phase, Result

logger = logging.getLogger(__name__)

REPORT_NUDGE_EVERY = 0.02  # seconds: wake the reporter at most this often within a batch
# Outcomes are committed in groups of up to OUTCOME_GROUP spanning at most
# OUTCOME_GROUP_SECONDS of sending, and always at the end of a claim: a commit per message
# costs more CPU than the SMTP transaction to a nearby relay.  What a killed dispatcher sent
# but had not committed is in its journal (dispatcher/journal.py), so a kill costs at most
# the message in hand whatever the group's size.  Measured with make bench (dispatch):
# groups of 8 within 10 ms gave ~6,000 msg/s, groups of 32 within 20 ms ~7,300.
OUTCOME_GROUP = 32
OUTCOME_GROUP_SECONDS = 0.02
# Group commits run at synchronous=NORMAL (no fsync; a killed process loses nothing that was
# committed, only power loss can) and one commit at the configured level (FULL) at least
# this often, and the last of every claim, makes every earlier one durable too.
OUTCOME_SYNC_EVERY = 0.05
RELAXED_LEVELS = {"FULL", "EXTRA"}  # levels above NORMAL, which outcome commits may relax
RECOVER_EVERY = 0.2  # seconds between looks for the journals of dead dispatchers: well inside
# the time their leases take to expire, so their sends are recorded before a takeover
MAX_FAILED_TURNS = 3  # turns in a row whose database writes fail: then exit, and be restarted


class Jammed(Exception):
    """The database refuses this process's writes turn after turn: exit for a restart."""


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
        guard: Guard | None = None,
    ):
        self.conn, self.config = conn, config
        self.ledger, self.pool, self.fetcher = ledger, pool, fetcher
        self.name, self.owner = name, f"{name}:{os.getpid()}"
        self.clock, self.rng = clock, rng or random.Random()
        self.should_stop, self.heartbeat = should_stop, heartbeat  # checked between messages
        self.judge = Judge(config, self.rng)
        self.breaker = Breaker(conn, clock, self.rng)
        self.guard = guard or pool.guard  # the pool's and the fetcher's, in the process
        self.leases = Leases(self._connect, self.owner, config.lease_seconds,
                             self.guard.interrupt, clock, self._alive_in_attempt)  # fmt: skip
        self._renewing = False  # the guard runs the renewal from the first claim on
        self.failed_turns = 0
        self.next_ready: float | None = None
        self.run_now_seen = store.settings.run_now_times(conn)  # {tenant or None: when}
        # test_mode: the tenants whose run-now was seen (None: the whole service's), claimed
        # until nothing of theirs is ready
        self.draining: set[str | None] = set()
        self._pending: list[Transition] = []  # outcomes not yet committed
        self._accounts: dict[AccountKey, tuple] = {}  # key -> (row snapshot, Endpoint)
        self.metering = Metering(ledger)
        self._unreported = 0  # terminal outcomes committed since the reporter was woken
        self._nudged = self._synced = 0.0
        self.health = AccountHealth()
        self.journal = Journal(config.run_dir / "journal", self.owner)
        self._recovered = 0.0  # when the journals of dead dispatchers were last looked at
        if config.synchronous in RELAXED_LEVELS:
            store.db.set_synchronous(conn, "NORMAL")
        conn.set_busy_handler(store.claims.BusyWait())

    def _connect(self):
        """The lease renewal's own connection (opened in the guard's thread)."""
        return store.db.connect(self.config.database, self.config.synchronous, migrate=False)

    def _alive_in_attempt(self, conn) -> None:
        """The heartbeat from the lease renewal (the guard's thread), while the attempt in
        hand is within its deadline: one long send or download must not look like a dead
        process, and one stuck past its deadline must."""
        remaining = self.guard.remaining()
        if remaining is None or remaining > 0:
            store.heartbeats.beat(conn, self.name, wakeup.DISPATCHER, os.getpid(), self.clock())

    def reconfigure(self, config: Config) -> None:
        """Adopt a re-read configuration (SIGHUP); the pool reconnects where it changed."""
        self.config = self.judge.config = config
        self.fetcher.config = config
        self.leases.lease_seconds = config.lease_seconds
        if self._renewing:
            self.guard.every(self.leases.period, self.leases.renew)
        self._accounts.clear()  # the default account comes from [smtp]

    # -- the iteration ------------------------------------------------------------------------
    def turn(self) -> bool:
        """``run_once`` now; a database error (disk full, locked too long) is logged, then
        sleep; MAX_FAILED_TURNS in a row raise Jammed (the process exits, is restarted)."""
        try:
            busy = self.run_once(self.clock())
        except apsw.Error:
            logger.exception(fields(event="turn_failed"))
            self.failed_turns += 1
            if self.failed_turns >= MAX_FAILED_TURNS:
                raise Jammed(f"{self.failed_turns} turns in a row failed") from None
            return False
        self.failed_turns = 0
        return busy

    def beat(self) -> None:
        """The process heartbeat, only while turns succeed: a jammed loop must look dead."""
        if not self.failed_turns:
            self.heartbeat()

    def run_once(self, now: float) -> bool:
        """Claim and deliver one batch; False when nothing was ready (the caller may sleep)."""
        if not self._may_claim():
            self.next_ready = None
            return False
        self._replay_journals(now)
        claim = store.claims.claim(
            self.conn,
            self.owner,
            now,
            self.config.lease_seconds,
            self.config.batch_size_per_account,
            self.config.has_default_account,
            only_tenants=self._draining_tenants(),
        )
        if not claim.messages:
            self.draining.clear()
            keys = list(claim.accounts)
            if self.config.has_default_account:
                keys.append((DEFAULT_TENANT, None))
            self.next_ready = store.claims.next_ready_at(self.conn, keys)
            return False
        self._deliver_claim(claim)
        return True

    def _replay_journals(self, now: float) -> None:
        """Record what dead dispatchers sent but never committed, before anyone takes it."""
        if now - self._recovered >= RECOVER_EVERY:
            self._recovered = now
            recover(self.conn, self.journal.path.parent, self.name)

    def idle_seconds(self) -> float:
        """How long to sleep when idle: the poll interval, or less if a row is due sooner."""
        wait = self.config.send_interval_seconds
        if self.next_ready is not None:
            wait = min(wait, max(0.0, self.next_ready - self.clock()))
        return wait

    def _may_claim(self) -> bool:
        if not store.settings.is_active(self.conn, self.config.active):
            return False  # suspended: reporting goes on, sending does not
        if not self.config.test_mode:
            return True
        requested = store.settings.run_now_times(self.conn)
        for tenant, at in requested.items():
            if at > self.run_now_seen.get(tenant, 0.0):
                self.draining.add(tenant)
        self.run_now_seen = requested
        return bool(self.draining)

    def _draining_tenants(self) -> set[str] | None:
        """test_mode: only the tenants a run-now named (None: no such restriction)."""
        if not self.config.test_mode or None in self.draining:
            return None
        return {t for t in self.draining if t is not None}

    def _deliver_claim(self, claim: Claim) -> None:
        # account (or tenant, when its tenant-wide limit is full) -> when its rows may go
        held: dict[AccountKey | str, float] = {}
        skipped: dict[AccountKey | str, list] = {}
        self._hold(claim)
        for index, row in enumerate(claim.messages):
            # SIGTERM, or a lease that could not be renewed: the message in hand is done;
            # give back the rest
            if self.should_stop() or not self.leases.fresh():
                self._commit()
                self._release([key(r) for r in claim.messages[index:]])
                break
            self.heartbeat()  # a long batch to a slow server must not look like a dead process
            account = (row["tenant_id"], row["account_id"])
            holder = _holder(held, account)
            if holder is not None:
                skipped.setdefault(holder, []).append(key(row))
                continue
            self._commit(only_if_due=True)
            transition, reached = self._attempt(row, claim)
            self._pending.append(transition)
            self.journal.note(transition)  # before the next send: a kill must not lose it
            count(row, transition, self.config.delivery_activity)
            self.health.note(label(*account), transition.attempt)
            if transition.attempt.outcome == Outcome.DEFERRED:
                held[self.metering.blocked or account] = transition.ready_at
            elif reached is False:  # the server could not be reached: open the circuit
                self._commit()  # the failed attempt first, then the circuit it opened
                held[account] = self.breaker.trip(account, transition.attempt)
            circuit = (row["tenant_id"], store.circuits.key(row["account_id"]))
            if reached is not False and circuit in claim.circuits:
                self.breaker.probed(account, reached)
                del claim.circuits[circuit]
        self._commit()
        for holder, keys in skipped.items():
            self._release(keys, held[holder])

    def _hold(self, claim: Claim) -> None:
        """Tell the lease renewal what this claim holds (started on the first claim)."""
        self.leases.hold([key(r) for r in claim.messages], claim.lease_expires)
        if not self._renewing:
            self.guard.every(self.leases.period, self.leases.renew)
            self._renewing = True

    def _release(self, keys: list, ready_at: float | None = None, sent: bool = False) -> None:
        """Give rows back unsent (SENDING -> QUEUED), ready at ``ready_at`` at the earliest;
        ``sent``: a copy may be with the server, so the resend is flagged."""
        store.claims.release(self.conn, keys, self.owner, self.clock(), ready_at, sent)
        self.leases.drop(keys)

    def _commit(self, only_if_due: bool = False) -> None:
        """Record pending outcomes in one transaction; with only_if_due, once the group is full."""
        if not self._pending:
            return
        now = self.clock()
        # measured from the start of the oldest pending send: slow sends commit one by one
        young = now - self._pending[0].attempt.ts < OUTCOME_GROUP_SECONDS
        if only_if_due and young and len(self._pending) < OUTCOME_GROUP:
            return
        sync_due = not only_if_due or now - self._synced >= OUTCOME_SYNC_EVERY
        pending, self._pending = self._pending, []
        try:
            durable = self._durable(sync_due)
            stale = store.claims.record(self.conn, pending, self.name, self.owner, durable)
        except apsw.Error:
            stale = self._record_one_by_one(pending)
        self.journal.clear()
        self.leases.drop([t.attempt.key for t in pending])
        for t in stale:
            logger.warning(fields(event="stale_outcome", id=t.attempt.message_id,
                                  outcome=t.attempt.outcome, detail=t.attempt.detail))  # fmt: skip
        self._unreported += sum(t.state in FINAL_NEXT for t in pending if t not in stale)
        self._nudge_reporter(force=not only_if_due)

    def _record_one_by_one(self, pending: list[Transition]) -> list[Transition]:
        """A group commit failed: record each outcome alone; one that still fails is logged
        and its message released (its lease, if even that fails, simply runs out)."""
        stale = []
        for t in pending:
            try:
                stale += store.claims.record(self.conn, [t], self.name, self.owner)
            except apsw.Error as exc:
                logger.error(fields(event="record_failed", id=t.attempt.message_id,
                                    outcome=t.attempt.outcome, reason=repr(exc)))  # fmt: skip
                sent = t.attempt.outcome in MAYBE_DELIVERED
                self._release([t.attempt.key], sent=sent)  # raises if the db is gone
        return stale

    def _durable(self, due: bool) -> str | None:
        """The synchronous level for a commit that makes every earlier one durable, or None."""
        if not due or self.config.synchronous not in RELAXED_LEVELS:
            return None
        self._synced = self.clock()
        return self.config.synchronous

    # -- one message --------------------------------------------------------------------------
    def _attempt(self, row: dict, claim: Claim) -> tuple[Transition, bool | None]:
        """Build, reserve, send: the message's transition, and whether its server could be
        reached (None: no SMTP was tried); every failure becomes the transition."""
        self.leases.current = key(row)
        try:
            account = claim.accounts.get((row["tenant_id"], row["account_id"]))
            return self._try(row, account, claim.tenants.get(row["tenant_id"]))
        finally:
            self.leases.current = None

    def _try(self, row: dict, account: dict | None, tenant: dict | None):
        started = self.clock()
        try:
            envelope, endpoint = self._prepare(row, account)
        except AttachmentError as exc:
            outcome = Outcome.PERMANENT if exc.final else Outcome.TEMPORARY
            return self._before_smtp(row, outcome, f"attachment {exc}", started), None
        except (mime.BuildError, crypto.SecretError) as exc:
            outcome = Outcome.PERMANENT if isinstance(exc, mime.BuildError) else Outcome.TEMPORARY
            return self._before_smtp(row, outcome, str(exc), started), None
        except Exception as exc:
            logger.exception(fields(event="build_failed", id=row["id"]))
            detail = f"internal error: {type(exc).__name__}"  # no payload text in the record
            return self._before_smtp(row, Outcome.TEMPORARY, detail, started), None
        envelope, suppressed = bounces.screen(self.conn, row["tenant_id"], envelope, self.config)
        if not envelope.recipients:  # every recipient suppressed: no slot, no connection
            return bounces.all_suppressed(row, suppressed, self.clock()), None
        try:
            free_at = self.metering.reserve(row, account, tenant, self.clock())
        except Exception as exc:  # the ledger file cannot be used: never send unmetered
            account = label(row["tenant_id"], row["account_id"])
            logger.exception(fields(event="ledger_failed", account=account))
            detail = f"rate-limit ledger: {exc!r}"
            return self._before_smtp(row, Outcome.TEMPORARY, detail, started), None
        if free_at is not None:
            return self.metering.held_back(row, account, tenant, free_at, self.clock()), None
        return self._send(row, envelope, endpoint, suppressed)

    def _before_smtp(self, row: dict, outcome: Outcome, detail: str, started: float):
        """The transition of a failure before any SMTP (attachments, building, the ledger)."""
        return self.judge.after(row, Result(outcome, Phase.CONNECT, None, detail), started,
                                self.clock())  # fmt: skip

    def _prepare(self, row: dict, account: dict | None) -> tuple[mime.Envelope, Endpoint]:
        if account is None and row["account_id"] is not None:
            raise mime.BuildError(f"account {row['account_id']!r} was deleted")
        endpoint = self._endpoint((row["tenant_id"], row["account_id"]), account)
        msg = payload.load(row["payload"])
        parts = self.fetcher.fetch_all(msg.attachments or [])
        envelope = mime.build(msg, parts, self.clock(), row["message_id_header"])
        return bounces.with_verp(envelope, row, msg, self.config), endpoint

    def _endpoint(self, account: AccountKey, row: dict | None) -> Endpoint:
        """The endpoint of an account, rebuilt only when its row changed."""
        snapshot = tuple(row.values()) if row is not None else ()
        cached = self._accounts.get(account)
        if cached is None or cached[0] != snapshot:
            if row is None:
                endpoint = Endpoint.from_config(self.config)
            else:
                endpoint = Endpoint.from_account(row, self.config.secret_key)
            cached = self._accounts[account] = (snapshot, endpoint)
        return cached[1]

    def _send(self, row: dict, envelope: mime.Envelope, endpoint: Endpoint, suppressed: list[str]):
        start = self.clock()
        if self.leases.taken(key(row)):  # lost while it was being built: not sent by us
            lost = Result(Outcome.TEMPORARY, Phase.CONNECT, None, "lease taken over before sending")
            return self.judge.after(row, lost, start, start), None
        recipients = still_to_send(row, envelope.recipients)
        delivered = bool(row["rcpt_done"])  # an earlier attempt reached some recipients
        account = (row["tenant_id"], row["account_id"])
        self.journal.sending(key(row))  # a kill from here on may leave a copy with the server
        try:
            result = deliver(self.pool, account, endpoint, envelope.sender,
                             recipients, envelope.data, delivered)  # fmt: skip
        except Exception as exc:  # a bug, not a server answer: the link's state is unknown
            logger.exception(fields(event="send_failed", id=row["id"]))
            self.pool.discard(account)
            result = Result(Outcome.UNCERTAIN, Phase.REPLY, None, f"internal error: {exc!r}")
        duration = self.clock() - start
        series(*account).send_seconds.observe(duration)
        result = bounces.after_send(self.conn, row, result, suppressed, self.config, self.clock())
        return self.judge.after(row, result, start, self.clock(), duration), reached(result)

    def retry_delay(self, attempts_done: int, uncertain: bool = False) -> float:
        """Seconds before the next try after ``attempts_done`` attempts (last delay repeats)."""
        return self.judge.retry_delay(attempts_done, uncertain)

    # -- bookkeeping --------------------------------------------------------------------------
    def _nudge_reporter(self, force: bool = False) -> None:
        """Wake the reporter after terminal outcomes, at most every REPORT_NUDGE_EVERY."""
        now = self.clock()
        if self._unreported and (force or now - self._nudged >= REPORT_NUDGE_EVERY):
            wakeup.notify(self.config.run_dir, wakeup.REPORTER)
            self._unreported, self._nudged = 0, now

    def close(self) -> None:
        """Close pooled SMTP connections, stop the guard's thread (shutdown)."""
        self.pool.close()
        self.guard.close()
        self.leases.close()
        self.journal.close(keep=bool(self._pending))  # uncommitted: another dispatcher replays


def _holder(held: dict, account: AccountKey) -> AccountKey | str | None:
    """What holds the account's rows back in this claim: its tenant's full tenant-wide
    limit, the account itself (limit or circuit), or nothing (None)."""
    if account[0] in held:
        return account[0]
    return account if account in held else None
