"""Messages seen from the API and the CLI: enqueue, delete, list, read, count.

Every function takes an open connection, the tenant whose messages it reads or writes
(ids are unique within a tenant; an aggregate may take ``tenant=None``: every tenant), and
the current time where the answer depends on it, so tests can pass a fixed clock.
Dispatch-side SQL is in ``claims``, report-side in ``reports``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apsw

from common.enums import Status
from common.store import bounces
from common.store.db import write
from common.store.status import STATUS_CASE_SQL, STATUS_SQL, status_of

RECORD_COLUMNS = (
    "id, account_id, priority, created_at, updated_at, deferred_ts, sent_ts, "
    "error_ts, error, reported_ts, lease_owner, lease_expires, attempts, smtp_code, refused, "
    "possible_duplicate, message_id_header"
)
MESSAGE_COLUMNS = f"{RECORD_COLUMNS}, payload"
PIECE_BYTES = 64 * 1024  # a stored payload is read in pieces this large (payload_pieces)


@dataclass(frozen=True)
class NewMessage:
    id: str
    account_id: str | None
    priority: int
    payload: dict
    deferred_ts: int | None
    message_id_header: str  # the Message-ID header: the client's, else generated at intake
    verp_token: str | None = None  # with [bounces] verp_domain: bounce+<token>@verp_domain


# A replacement keeps the stored Message-ID unless the old or the new payload names its own:
# an earlier attempt under this id may have been delivered, and its copy must stay
# recognisable.  (SET expressions see the row as it was before the update.)
_UPSERT = """
INSERT INTO messages (tenant_id, id, account_id, priority, payload, created_at, updated_at,
                      deferred_ts, ready_at, enqueued_at, message_id_header, verp_token)
VALUES (:tenant, :id, :account_id, :priority, :payload, :now_s, :now_s, :deferred_ts,
        :ready_at, :now, :message_id_header, :verp_token)
ON CONFLICT(tenant_id, id) DO UPDATE SET
    verp_token = coalesce(messages.verp_token, excluded.verp_token),
    message_id_header = CASE
        WHEN coalesce(json_extract(messages.payload, '$.message_id'), '') = ''
         AND coalesce(json_extract(excluded.payload, '$.message_id'), '') = ''
        THEN messages.message_id_header ELSE excluded.message_id_header END,
    account_id = excluded.account_id, priority = excluded.priority,
    payload = excluded.payload, updated_at = excluded.updated_at,
    deferred_ts = excluded.deferred_ts, ready_at = excluded.ready_at,
    enqueued_at = excluded.enqueued_at,
    error_ts = NULL, error = NULL, reported_ts = NULL, outcome_at = NULL,
    lease_owner = NULL, lease_expires = NULL, attempts = 0, smtp_code = NULL, refused = NULL,
    rcpt_done = NULL
WHERE sent_ts IS NULL AND (lease_expires IS NULL OR lease_expires <= :now)
"""


def enqueue(conn, tenant: str, messages: Iterable[NewMessage], now: float) -> dict[str, str | None]:
    """Store messages in one transaction: {id: None if queued, else the rejection reason}.

    A known id is replaced while no dispatcher holds it and it has not been sent (an
    errored message may be resubmitted, as with the reference service).
    """
    results: dict[str, str | None] = {}
    with write(conn):
        for msg in messages:
            params = {
                "tenant": tenant,
                "id": msg.id,
                "account_id": msg.account_id,
                "priority": msg.priority,
                "payload": json.dumps(msg.payload, ensure_ascii=False, separators=(",", ":")),
                "deferred_ts": msg.deferred_ts,
                "message_id_header": msg.message_id_header,
                "verp_token": msg.verp_token,
                "ready_at": max(now, msg.deferred_ts or 0),
                "now": now,
                "now_s": int(now),
            }
            try:
                conn.execute(_UPSERT, params)
            except apsw.ConstraintError:  # its account was deleted since the caller checked
                results[msg.id] = f"unknown account_id {msg.account_id!r}"
                continue
            results[msg.id] = None if conn.changes() else _why_not_replaced(conn, tenant, msg.id)
    return results


def _why_not_replaced(conn, tenant: str, message_id: str) -> str:
    row = conn.execute(
        "SELECT sent_ts FROM messages WHERE tenant_id = ? AND id = ?", (tenant, message_id)
    ).fetchone()
    return "already sent" if row and row["sent_ts"] is not None else "in flight"


def delete(conn, tenant: str, ids: list[str], now: float) -> dict[str, list[str]]:
    """Remove messages no dispatcher holds; report which were missing or in flight."""
    out: dict[str, list[str]] = {"removed": [], "not_found": [], "in_flight": []}
    with write(conn):
        for message_id in dict.fromkeys(ids):
            conn.execute(  # a NULL lease_expires means not leased: coalesce, or NOT NULL is NULL
                "DELETE FROM messages WHERE tenant_id = ? AND id = ? AND NOT "
                "(sent_ts IS NULL AND error_ts IS NULL AND coalesce(lease_expires, 0) > ?)",
                (tenant, message_id, now),
            )
            if conn.changes():
                out["removed"].append(message_id)
            elif _exists(conn, tenant, message_id):
                out["in_flight"].append(message_id)
            else:
                out["not_found"].append(message_id)
    return out


# integers in every API answer, as in the reference
EPOCH_FIELDS = (
    "created_at",
    "updated_at",
    "deferred_ts",
    "sent_ts",
    "error_ts",
    "reported_ts",
    "lease_expires",
)


def _message_out(row: dict, now: float) -> dict:
    row["status"] = status_of(row, now).value
    if "payload" in row:
        row["message"] = json.loads(row.pop("payload"))
    row["refused"] = json.loads(row["refused"]) if row["refused"] else None
    row["possible_duplicate"] = bool(row["possible_duplicate"])
    for name in EPOCH_FIELDS:
        if row[name] is not None:
            row[name] = int(row[name])
    return row


def list_page(
    conn,
    tenant: str,
    now: float,
    *,
    status: Status | None = None,
    active_only: bool = False,
    account_id: str | None = None,
    limit: int = 100,
    cursor: int = 0,
    payloads: bool = True,
    byte_budget: int | None = None,
) -> tuple[list[dict], int | None]:
    """A page of messages in storage order, and the cursor of the next page (or None).

    Without ``payloads`` the records leave out ``message``; with ``byte_budget`` the page
    also ends after the record whose stored payload brings the page to that many bytes
    (one record at least), for a caller that reads them with ``payload_pieces``.
    """
    where = ["rowid > :cursor", "tenant_id = :tenant"]
    # one more row than asked: is there a next page?
    params = {"cursor": cursor, "tenant": tenant, "now": now, "limit": limit + 1}
    if status is not None:
        where.append(f"({STATUS_SQL[status]})")
    if active_only:
        where.append("sent_ts IS NULL AND error_ts IS NULL")
    if account_id is not None:
        where.append("account_id = :account_id")
        params["account_id"] = account_id
    columns = MESSAGE_COLUMNS if payloads else RECORD_COLUMNS
    rows = conn.execute(  # octet_length reads the stored size, not the payload itself
        f"SELECT rowid AS _rowid, octet_length(payload) AS _bytes, {columns} FROM messages "
        f"WHERE {' AND '.join(where)} ORDER BY rowid LIMIT :limit",
        params,
    ).fetchall()
    kept = _within_budget(rows[:limit], byte_budget)
    next_cursor = kept[-1]["_rowid"] if len(kept) < len(rows) else None
    for row in kept:
        del row["_rowid"], row["_bytes"]
    return [_message_out(row, now) for row in kept], next_cursor


def _within_budget(rows: list[dict], byte_budget: int | None) -> list[dict]:
    """The leading rows whose payloads fit ``byte_budget`` (the first always does)."""
    if byte_budget is None:
        return rows
    total = 0
    for count, row in enumerate(rows, start=1):
        total += row["_bytes"]
        if total >= byte_budget:
            return rows[:count]
    return rows


def payload_pieces(conn, tenant: str, message_id: str) -> Iterator[bytes] | None:
    """The stored payload (JSON text, UTF-8) in pieces, never whole in memory; None if gone."""
    row = conn.execute(
        "SELECT rowid AS r FROM messages WHERE tenant_id = ? AND id = ?", (tenant, message_id)
    ).fetchone()
    if row is None:
        return None
    blob = conn.blob_open("main", "messages", "payload", row["r"], False)

    def pieces() -> Iterator[bytes]:
        with blob:
            while piece := blob.read(PIECE_BYTES):
                yield piece

    return pieces()


def get(conn, tenant: str, message_id: str, now: float) -> dict | None:
    """One message with its attempts, or None."""
    row = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = ? AND id = ?",
        (tenant, message_id),
    ).fetchone()
    if row is None:
        return None
    record = _message_out(row, now)
    record["attempt_log"] = [
        {**a, "ts": int(a["ts"])}
        for a in conn.execute(
            "SELECT ts, outcome, smtp_code, detail, duration, process FROM attempts "
            "WHERE tenant_id = ? AND message_id = ? ORDER BY id",
            (tenant, message_id),
        )
    ]
    record["bounces"] = bounces.of_message(conn, tenant, message_id)
    return record


def _of(tenant: str | None) -> str:
    """The condition that keeps one tenant's rows (:tenant), or every row (None)."""
    return "1" if tenant is None else "tenant_id = :tenant"


def status_counts(conn, now: float, tenant: str | None = None) -> dict[str, int]:
    """How many messages have each status (of one tenant, or of all)."""
    counts = {s.value: 0 for s in Status}
    for row in conn.execute(
        f"SELECT {STATUS_CASE_SQL} AS status, count(*) AS n FROM messages "
        f"WHERE {_of(tenant)} GROUP BY 1",
        {"now": now, "tenant": tenant},
    ):
        counts[row["status"]] = row["n"]
    return counts


def pending_by_priority(conn, tenant: str | None = None) -> dict[int, int]:
    """Unsent messages per priority (of one tenant, or of all)."""
    counts = {p: 0 for p in range(4)}
    for row in conn.execute(
        "SELECT priority, count(*) AS n FROM messages "
        f"WHERE sent_ts IS NULL AND error_ts IS NULL AND {_of(tenant)} GROUP BY priority",
        {"tenant": tenant},
    ):
        counts[row["priority"]] = row["n"]
    return counts


def due_by_account(conn, now: float) -> dict[tuple[str, str | None], int]:
    """Unsent messages whose time has come, per (tenant, account) (None: [smtp]'s).

    Due means ready now, or waiting to retry after a failed attempt; a message the client
    scheduled for later, or one held back by a rate limit, is not due yet.
    """
    rows = conn.execute(
        "SELECT tenant_id, account_id, count(*) AS n FROM messages INDEXED BY messages_claim "
        "WHERE sent_ts IS NULL AND error_ts IS NULL AND (ready_at <= ? OR attempts > 0) "
        "GROUP BY tenant_id, account_id",
        (now,),
    )
    return {(row["tenant_id"], row["account_id"]): row["n"] for row in rows}


def oldest_ready_age(conn, now: float, tenant: str | None = None) -> float:
    """Seconds the oldest claimable message has waited (0 when none is ready)."""
    row = conn.execute(
        "SELECT min(ready_at) AS t FROM messages WHERE sent_ts IS NULL AND error_ts IS NULL "
        f"AND ready_at <= :now AND {_of(tenant)}",
        {"now": now, "tenant": tenant},
    ).fetchone()
    return 0.0 if row["t"] is None else max(0.0, now - row["t"])


def counts_by_status_and_priority(
    conn, now: float, tenant: str | None = None
) -> dict[str, dict[int, int]]:
    """{status: {priority: count}} over the stored messages (of one tenant), in one scan."""
    counts = {s.value: {p: 0 for p in range(4)} for s in Status}
    for row in conn.execute(
        f"SELECT {STATUS_CASE_SQL} AS status, priority, count(*) AS n FROM messages "
        f"WHERE {_of(tenant)} GROUP BY 1, 2",
        {"now": now, "tenant": tenant},
    ):
        counts[row["status"]][row["priority"]] = row["n"]
    return counts


# -- retry: the operator requeues what failed or waits for a retry ----------------------------
REQUEUE_BATCH = 500  # rows per write transaction: a large requeue never stalls enqueues

# What `retry` may requeue: a terminal error, or a row waiting for the retry of a failed
# attempt.  A row deferred only by its client's deferred_ts (attempts = 0) is the client's
# schedule, and a rate-limit wait without a failed attempt would only be deferred again.
RETRYABLE_SQL = {
    Status.ERROR: STATUS_SQL[Status.ERROR],
    Status.DEFERRED: f"{STATUS_SQL[Status.DEFERRED]} AND attempts > 0",
}

# ERROR/DEFERRED -> QUEUED.  A requeued error's outcome is undone (outcome_at, reported_ts
# cleared): its next terminal outcome owes the client a fresh report, and the retention
# purge, which counts from those columns, cannot remove it meanwhile.  `error` and
# `smtp_code` stay as the last attempt left them until the next outcome replaces them.
_REQUEUE = """
UPDATE messages SET error_ts = NULL, outcome_at = NULL, reported_ts = NULL, deferred_ts = NULL,
    ready_at = :now, updated_at = :now_s,
    attempts = CASE WHEN :reset THEN 0 ELSE attempts END
WHERE tenant_id = :tenant AND id = :id AND ({retryable})
"""


def retryable_ids(
    conn, tenant: str, now: float, statuses: Iterable[Status], account_id: str | None = None
) -> list[str]:
    """Ids of the rows ``requeue`` would take, of these statuses (and this account)."""
    where = " OR ".join(f"({RETRYABLE_SQL[s]})" for s in statuses)
    where = f"tenant_id = :tenant AND ({where})"
    params: dict = {"now": now, "tenant": tenant}
    if account_id is not None:
        where = f"{where} AND account_id = :account_id"
        params["account_id"] = account_id
    return [row["id"] for row in conn.execute(f"SELECT id FROM messages WHERE {where}", params)]


def requeue(conn, tenant: str, ids: list[str], now: float, reset_attempts: bool) -> list[str]:
    """Requeue the listed rows that are still retryable, in short batches; the ids requeued."""
    retryable = " OR ".join(f"({sql})" for sql in RETRYABLE_SQL.values())
    statement = _REQUEUE.format(retryable=retryable)
    done: list[str] = []
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), REQUEUE_BATCH):
        with write(conn):
            for message_id in unique[start : start + REQUEUE_BATCH]:
                params = {"tenant": tenant, "id": message_id, "now": now, "now_s": int(now),
                          "reset": reset_attempts}  # fmt: skip
                conn.execute(statement, params)
                if conn.changes():
                    done.append(message_id)
    return done


def existing_ids(conn, tenant: str, ids: Iterable[str]) -> set[str]:
    """Which of these ids are stored (in the tenant)."""
    return {message_id for message_id in dict.fromkeys(ids) if _exists(conn, tenant, message_id)}


def _exists(conn, tenant: str, message_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM messages WHERE tenant_id = ? AND id = ?", (tenant, message_id)
        ).fetchone()
        is not None
    )
