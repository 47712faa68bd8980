"""Dispatch-side SQL: claim ready messages under a lease, release them, record outcomes.

A claim is one short ``BEGIN IMMEDIATE`` transaction; SMTP runs outside any transaction;
recording an outcome is a second short transaction.  ``ready_at`` is the earliest moment a
row may be claimed (enqueue time, ``deferred_ts``, retry time or lease expiry), so every
claim query is a range scan of the ``messages_claim`` index:

    QUEUED/DEFERRED -> SENDING   claim(): lease_owner, lease_expires, ready_at = lease_expires
    SENDING -> SENT / ERROR      record(): sent_ts or error_ts, outcome_at, lease cleared
    SENDING -> DEFERRED          record(): retry or rate limit, deferred_ts = ready_at = later
    SENDING -> QUEUED            release(): lease cleared, ready_at = max(now, deferred_ts)
    SENDING (expired) -> SENDING another dispatcher's claim once lease_expires has passed

Fencing: an outcome, a release or a lease extension applies only while ``lease_owner`` is
still the writer.  A holder whose lease ran out and was taken over is stale: ``record``
refuses its outcome (returned to the caller, which logs it) and only keeps what it proves,
the attempt row and, when a copy may have reached the server, ``possible_duplicate``.
A dispatcher does one attempt at a time and a takeover always writes another owner, so
the owner (name:pid) is the fencing token; no generation number is needed.

Accounts whose circuit is open (``circuits``) are not claimed at all until ``open_until``;
then one claim takes a single row, the probe, and holds the circuit for its lease.

Tenants (docs/tenants.md): only the rows of tenants switched on are claimed, and a claim's
rows are ordered for fairness, round-robin across tenants first, then round-robin across
the accounts of a tenant, then by priority and age within an account.  Message ids are
unique within a tenant only, so a row is named by its key (tenant, id).

``maybe_sent`` makes crash resends visible: the replay of a dead holder's journal sets it on
the message that holder had in hand (dispatcher/journal.py), and a restore on every row the
lost host may have sent; outcomes and releases clear it.  A claim that finds it set marks
the message ``possible_duplicate``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from common.enums import (
    DEFAULT_TENANT,
    MAYBE_DELIVERED,
    PRIORITIES,
    UNCOUNTED_OUTCOMES,
    Next,
    Outcome,
)
from common.store.db import BUSY_TIMEOUT_MS, set_synchronous, write

Key = tuple[str, str]  # a message: (tenant, id)
AccountKey = tuple[str, str | None]  # an account: (tenant, id; None: the [smtp] account)

# SQLite's own busy handler sleeps 1 ms, then 2, 5, 10 ... while a dispatcher's write holds
# the lock for ~50 µs: retry sooner, backing off to BUSY_MAX_WAIT, within the same deadline.
BUSY_FIRST_WAIT = 0.00005
BUSY_MAX_WAIT = 0.005

_READY = """
SELECT tenant_id, id, account_id, priority, payload, attempts, enqueued_at, deferred_ts,
       ready_at, message_id_header, verp_token, refused, rcpt_done
FROM messages INDEXED BY messages_claim
WHERE tenant_id = :tenant AND account_id IS :account_id AND priority = :priority
  AND sent_ts IS NULL AND error_ts IS NULL AND ready_at <= :now
ORDER BY ready_at LIMIT :limit
"""

_NEXT_READY = """
SELECT ready_at FROM messages INDEXED BY messages_claim
WHERE tenant_id = :tenant AND account_id IS :account_id AND priority = :priority
  AND sent_ts IS NULL AND error_ts IS NULL
ORDER BY ready_at LIMIT 1
"""

# The accounts of the tenants whose mail may go now (switched on by the operator and by
# themselves, not being deleted).
_SENDING_ACCOUNTS = """
SELECT a.* FROM accounts AS a JOIN tenants AS t ON t.id = a.tenant_id
WHERE t.deleted_at IS NULL AND t.active AND t.dispatching
ORDER BY a.tenant_id, a.id
"""
_SENDING_TENANTS = """
SELECT id, limit_per_minute, limit_per_hour, limit_per_day, limit_behavior FROM tenants
WHERE deleted_at IS NULL AND active AND dispatching ORDER BY id
"""


class BusyWait:
    """An apsw busy handler for short, frequent write transactions."""

    def __init__(self, timeout: float = BUSY_TIMEOUT_MS / 1000):
        self.timeout = timeout
        self.started = 0.0

    def __call__(self, prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            self.started = now
        if now - self.started >= self.timeout:
            return False
        time.sleep(min(BUSY_FIRST_WAIT * 2**prior_calls, BUSY_MAX_WAIT))
        return True


@dataclass
class Claim:
    """What one claim took: messages in sending order, every live account row of the tenants
    that send (read fresh), the circuits on record ((tenant, account key) -> failures; '' is
    the default account), and the sending tenants' rows (their tenant-wide limits)."""

    messages: list[dict]
    accounts: dict[AccountKey, dict] = field(default_factory=dict)
    lease_expires: float = 0.0
    circuits: dict[tuple[str, str], int] = field(default_factory=dict)
    tenants: dict[str, dict] = field(default_factory=dict)


def key(row: dict) -> Key:
    """The key of a messages row."""
    return row["tenant_id"], row["id"]


_LEASE = """
UPDATE messages SET lease_owner = ?, lease_expires = ?, ready_at = ?,
    possible_duplicate = max(possible_duplicate, maybe_sent), maybe_sent = 0
WHERE tenant_id = ? AND id = ?
"""


def claim(
    conn,
    owner: str,
    now: float,
    lease_seconds: float,
    default_batch: int,
    include_default: bool,
    only_tenants: set[str] | None = None,
) -> Claim:
    """Lease up to each account's batch of ready messages, of the tenants switched on; in
    fair order (the module docstring).

    ``include_default``: the [smtp] account exists (it belongs to the default tenant).
    ``only_tenants``: these tenants' messages only (None: every tenant's).
    """
    expires = now + lease_seconds
    by_account: dict[AccountKey, list[dict]] = {}
    with write(conn):
        tenants = {
            t["id"]: t
            for t in conn.execute(_SENDING_TENANTS)
            if only_tenants is None or t["id"] in only_tenants
        }
        accounts = {
            (a["tenant_id"], a["id"]): a
            for a in conn.execute(_SENDING_ACCOUNTS)
            if a["tenant_id"] in tenants
        }
        circuits = {
            (c["tenant_id"], c["account"]): c for c in conn.execute("SELECT * FROM circuits")
        }
        batches = [(k, a["batch_size"] or default_batch) for k, a in accounts.items()]
        if include_default and DEFAULT_TENANT in tenants:
            batches.append(((DEFAULT_TENANT, None), default_batch))
        for account, limit in batches:
            circuit = circuits.get((account[0], account[1] or ""))
            if circuit is None or accounts.get(account, {}).get("deleted_at"):
                by_account[account] = _ready_rows(conn, account, now, limit)
            elif circuit["open_until"] <= now:  # half-open: one probe, and no other prober
                by_account[account] = probe = _ready_rows(conn, account, now, 1)
                conn.executemany(
                    "UPDATE circuits SET open_until = ? WHERE tenant_id = ? AND account = ?",
                    [(expires, circuit["tenant_id"], circuit["account"])] if probe else [],
                )
        rows = fair_order(by_account)
        conn.executemany(
            _LEASE,
            [(owner, expires, expires, row["tenant_id"], row["id"]) for row in rows],
        )
    live = {k: a for k, a in accounts.items() if a["deleted_at"] is None}
    failures = {k: c["failures"] for k, c in circuits.items()}
    return Claim(rows, live, expires, failures, tenants)


def fair_order(by_account: dict[AccountKey, list[dict]]) -> list[dict]:
    """Round-robin across tenants, then across a tenant's accounts; each account's rows in
    the order given (priority, then age)."""
    by_tenant: dict[str, list[list[dict]]] = {}
    for (tenant, _), rows in sorted(by_account.items(), key=lambda item: _sortable(item[0])):
        if rows:
            by_tenant.setdefault(tenant, []).append(rows)
    return _interleave([_interleave(queues) for queues in by_tenant.values()])


def _sortable(account: AccountKey) -> tuple[str, str]:
    return account[0], account[1] or ""


def _interleave(queues: list[list[dict]]) -> list[dict]:
    """One item from each queue in turn, until every queue is empty."""
    turns = itertools.zip_longest(*queues)
    return [item for turn in turns for item in turn if item is not None]


def _ready_rows(conn, account: AccountKey, now: float, limit: int) -> list[dict]:
    found: list[dict] = []
    for priority in PRIORITIES:
        if len(found) >= limit:
            break
        params = {
            "tenant": account[0],
            "account_id": account[1],
            "priority": priority,
            "now": now,
            "limit": limit - len(found),
        }
        found.extend(conn.execute(_READY, params).fetchall())
    return found


def next_ready_at(conn, accounts: list[AccountKey]) -> float | None:
    """When a message of these accounts may next be claimed (None: nothing queued): the
    earliest ready_at, or for an account whose circuit is open, the circuit's open_until."""
    circuits = {
        (c["tenant_id"], c["account"]): c["open_until"]
        for c in conn.execute("SELECT * FROM circuits")
    }
    earliest = None
    for tenant, account_id in accounts:
        for priority in PRIORITIES:
            row = conn.execute(
                _NEXT_READY, {"tenant": tenant, "account_id": account_id, "priority": priority}
            ).fetchone()
            if row is None:
                continue
            due = max(row["ready_at"], circuits.get((tenant, account_id or ""), 0.0))
            if earliest is None or due < earliest:
                earliest = due
    return earliest


def extend_lease(conn, keys: list[Key], owner: str, expires: float) -> list[Key]:
    """Push the lease of rows still held forward; the keys no longer held (taken over)."""
    lost = []
    with write(conn):
        for tenant, message_id in keys:
            conn.execute(
                "UPDATE messages SET lease_expires = ?, ready_at = ? WHERE tenant_id = ? "
                "AND id = ? AND lease_owner = ? AND sent_ts IS NULL AND error_ts IS NULL",
                (expires, expires, tenant, message_id, owner),
            )
            if not conn.changes():
                lost.append((tenant, message_id))
    return lost


def release(
    conn,
    keys: list[Key],
    owner: str,
    now: float,
    ready_at: float | None = None,
    possible_duplicate: bool = False,
) -> None:
    """Give rows back unsent: SENDING -> QUEUED (ready at ``ready_at`` or their deferred_ts).

    ``possible_duplicate``: a copy may have reached the server (its outcome could not be
    recorded), so the resend is flagged.
    """
    if not keys:
        return
    with write(conn):
        conn.executemany(
            "UPDATE messages SET lease_owner = NULL, lease_expires = NULL, maybe_sent = 0, "
            "possible_duplicate = max(possible_duplicate, :dup), "
            "ready_at = max(:now, coalesce(deferred_ts, 0), coalesce(:ready_at, 0)) "
            "WHERE tenant_id = :tenant AND id = :id AND lease_owner = :owner "
            "AND sent_ts IS NULL AND error_ts IS NULL",
            [
                {"tenant": tenant, "id": i, "owner": owner, "now": now, "ready_at": ready_at,
                 "dup": int(possible_duplicate)}
                for tenant, i in keys
            ],
        )  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as the attempts table records it."""

    message_id: str
    account_id: str | None
    ts: float  # the moment the SMTP send started (the rate-limit ledger is rebuilt from it)
    outcome: Outcome
    smtp_code: int | None = None
    detail: str = ""
    duration: float | None = None
    tenant_id: str = DEFAULT_TENANT

    @property
    def key(self) -> Key:
        """The key of the message attempted."""
        return self.tenant_id, self.message_id


@dataclass(frozen=True)
class Transition:
    """A message's next state after an attempt."""

    attempt: Attempt
    state: Next
    now: float
    ready_at: float | None = None  # retry and deferred: when the row may be claimed again
    error: str | None = None
    refused: dict | None = None  # address -> [code, text]: every refusal so far
    possible_duplicate: bool = False
    rcpt_done: list[str] | None = None  # recipients accepted so far (some still to go)


_SENT = """
UPDATE messages SET sent_ts = :now_s, outcome_at = :now, updated_at = :now_s,
    error = NULL, smtp_code = :code, refused = :refused, attempts = attempts + 1,
    possible_duplicate = max(possible_duplicate, :dup),
    lease_owner = NULL, lease_expires = NULL, maybe_sent = 0
WHERE tenant_id = :tenant AND id = :id AND lease_owner = :owner
  AND sent_ts IS NULL AND error_ts IS NULL
"""
_ERROR = """
UPDATE messages SET error_ts = :now_s, outcome_at = :now, updated_at = :now_s,
    error = :error, smtp_code = coalesce(:code, smtp_code),
    refused = coalesce(:refused, refused),
    attempts = attempts + :counted, possible_duplicate = max(possible_duplicate, :dup),
    lease_owner = NULL, lease_expires = NULL, maybe_sent = 0
WHERE tenant_id = :tenant AND id = :id AND lease_owner = :owner
  AND sent_ts IS NULL AND error_ts IS NULL
"""
_RETRY = """
UPDATE messages SET deferred_ts = :deferred_ts, ready_at = :ready_at, updated_at = :now_s,
    error = coalesce(:error, error), smtp_code = coalesce(:code, smtp_code),
    refused = coalesce(:refused, refused), rcpt_done = coalesce(:rcpt_done, rcpt_done),
    attempts = attempts + :counted,
    possible_duplicate = max(possible_duplicate, :dup),
    lease_owner = NULL, lease_expires = NULL, maybe_sent = 0
WHERE tenant_id = :tenant AND id = :id AND lease_owner = :owner
  AND sent_ts IS NULL AND error_ts IS NULL
"""
_STATEMENTS = {Next.SENT: _SENT, Next.ERROR: _ERROR, Next.RETRY: _RETRY, Next.DEFERRED: _RETRY}


@contextlib.contextmanager
def _synchronous(conn, level: str | None) -> Iterator[None]:
    """Commit at ``level`` (e.g. FULL) inside the block, then return to the connection's own.

    On a connection running at NORMAL, one FULL commit fsyncs the WAL, which makes every
    earlier commit durable too.
    """
    if level is None:
        yield
        return
    baseline = conn.execute("PRAGMA synchronous").fetchone()["synchronous"]
    set_synchronous(conn, level)
    try:
        yield
    finally:
        set_synchronous(conn, baseline)


def record(
    conn,
    transitions: list[Transition],
    process: str,
    owner: str,
    durable: str | None = None,
    maybe_sent: Key | None = None,
) -> list[Transition]:
    """Apply the owner's outcomes and write their attempts rows, in one short transaction.

    Returns the stale transitions: rows ``owner`` no longer holds, left as they are (see
    the module docstring).  ``maybe_sent``: a message a dead owner had in hand (a copy may
    be with the server): its next claim flags it, or, taken already, it is flagged now.
    """
    stale = []
    with _synchronous(conn, durable), write(conn):
        for t in transitions:
            if not _apply(conn, t, process, owner):
                stale.append(t)
        if maybe_sent is not None:
            _suspect(conn, maybe_sent, owner)
    return stale


def _suspect(conn, message: Key, owner: str) -> None:
    conn.execute(
        "UPDATE messages SET maybe_sent = 1 WHERE tenant_id = ? AND id = ? AND lease_owner = ?",
        (*message, owner),
    )
    if not conn.changes():  # another holder has it: its copy would be the second
        conn.execute(
            "UPDATE messages SET possible_duplicate = 1 WHERE tenant_id = ? AND id = ? "
            "AND sent_ts IS NULL AND error_ts IS NULL",
            message,
        )


def _apply(conn, t: Transition, process: str, owner: str) -> bool:
    """Apply one transition; False when the row is not the owner's any more."""
    a = t.attempt
    conn.execute(
        _STATEMENTS[t.state],
        {
            "tenant": a.tenant_id,
            "id": a.message_id,
            "owner": owner,
            "now": t.now,
            "now_s": int(t.now),
            "code": a.smtp_code,
            "error": t.error,
            "counted": 0 if a.outcome in UNCOUNTED_OUTCOMES else 1,
            "dup": int(t.possible_duplicate),
            "refused": json.dumps(t.refused) if t.refused else None,
            "rcpt_done": json.dumps(t.rcpt_done) if t.rcpt_done else None,
            "ready_at": t.ready_at,
            "deferred_ts": None if t.ready_at is None else math.ceil(t.ready_at),
        },
    )
    applied = conn.changes() > 0
    if not applied and a.outcome in MAYBE_DELIVERED:  # a stale holder's copy went out
        conn.execute(
            "UPDATE messages SET possible_duplicate = 1 WHERE tenant_id = ? AND id = ?", a.key
        )
    # the attempt happened, so it is recorded (the rate-limit ledger counts it) while the
    # message exists: one deleted under a stale holder leaves nothing to attach it to
    if (
        applied
        or conn.execute("SELECT 1 FROM messages WHERE tenant_id = ? AND id = ?", a.key).fetchone()
    ):
        conn.execute(
            "INSERT INTO attempts(tenant_id, message_id, account_id, ts, outcome, smtp_code, "
            "detail, duration, process) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.tenant_id, a.message_id, a.account_id, a.ts, a.outcome, a.smtp_code, a.detail,
             a.duration, process),
        )  # fmt: skip
    return applied


def suspect_after_restore(conn, now: float) -> int:
    """Mark ``maybe_sent`` every unsent row a lost host may have sent after its copy was made.

    A copy restored from a replica lags the lost database by up to the replica's lag: a row
    the copy shows leased, or ready to claim, may have been sent there since.  The next claim
    of such a row marks the message possible_duplicate.  A row whose ready_at is still ahead
    cannot have been claimed anywhere yet and stays as it is.  Returns the rows marked.
    """
    with write(conn):
        conn.execute(
            "UPDATE messages SET maybe_sent = 1 WHERE sent_ts IS NULL AND error_ts IS NULL "
            "AND (lease_owner IS NOT NULL OR ready_at <= ?)",
            (now,),
        )
        return conn.changes()
