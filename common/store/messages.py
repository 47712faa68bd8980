"""Messages seen from the API and the CLI: enqueue, delete, list, read, count.

Every function takes an open connection and the current time where the answer depends on it,
so tests can pass a fixed clock.  Dispatch-side SQL is in ``claims``, report-side in
``reports``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import apsw

from common.enums import Status
from common.store.db import write
from common.store.status import STATUS_CASE_SQL, STATUS_SQL, status_of

MESSAGE_COLUMNS = (
    "id, account_id, priority, payload, created_at, updated_at, deferred_ts, sent_ts, "
    "error_ts, error, reported_ts, lease_owner, lease_expires, attempts, smtp_code, refused, "
    "possible_duplicate"
)


@dataclass(frozen=True)
class NewMessage:
    id: str
    account_id: str | None
    priority: int
    payload: dict
    deferred_ts: int | None


_UPSERT = """
INSERT INTO messages (id, account_id, priority, payload, created_at, updated_at, deferred_ts,
                      ready_at, enqueued_at)
VALUES (:id, :account_id, :priority, :payload, :now_s, :now_s, :deferred_ts, :ready_at, :now)
ON CONFLICT(id) DO UPDATE SET
    account_id = excluded.account_id, priority = excluded.priority,
    payload = excluded.payload, updated_at = excluded.updated_at,
    deferred_ts = excluded.deferred_ts, ready_at = excluded.ready_at,
    enqueued_at = excluded.enqueued_at,
    error_ts = NULL, error = NULL, reported_ts = NULL, outcome_at = NULL,
    lease_owner = NULL, lease_expires = NULL, attempts = 0, smtp_code = NULL, refused = NULL,
    rcpt_done = NULL
WHERE sent_ts IS NULL AND (lease_expires IS NULL OR lease_expires <= :now)
"""


def enqueue(conn, messages: Iterable[NewMessage], now: float) -> dict[str, str | None]:
    """Store messages in one transaction: {id: None if queued, else the rejection reason}.

    A known id is replaced while no dispatcher holds it and it has not been sent (an
    errored message may be resubmitted, as with the reference service).
    """
    results: dict[str, str | None] = {}
    with write(conn):
        for msg in messages:
            params = {
                "id": msg.id,
                "account_id": msg.account_id,
                "priority": msg.priority,
                "payload": json.dumps(msg.payload, ensure_ascii=False, separators=(",", ":")),
                "deferred_ts": msg.deferred_ts,
                "ready_at": max(now, msg.deferred_ts or 0),
                "now": now,
                "now_s": int(now),
            }
            try:
                conn.execute(_UPSERT, params)
            except apsw.ConstraintError:  # its account was deleted since the caller checked
                results[msg.id] = f"unknown account_id {msg.account_id!r}"
                continue
            results[msg.id] = None if conn.changes() else _why_not_replaced(conn, msg.id)
    return results


def _why_not_replaced(conn, message_id: str) -> str:
    row = conn.execute("SELECT sent_ts FROM messages WHERE id = ?", (message_id,)).fetchone()
    return "already sent" if row and row["sent_ts"] is not None else "in flight"


def delete(conn, ids: list[str], now: float) -> dict[str, list[str]]:
    """Remove messages no dispatcher holds; report which were missing or in flight."""
    out: dict[str, list[str]] = {"removed": [], "not_found": [], "in_flight": []}
    with write(conn):
        for message_id in dict.fromkeys(ids):
            conn.execute(  # a NULL lease_expires means not leased: coalesce, or NOT NULL is NULL
                "DELETE FROM messages WHERE id = ? AND NOT "
                "(sent_ts IS NULL AND error_ts IS NULL AND coalesce(lease_expires, 0) > ?)",
                (message_id, now),
            )
            if conn.changes():
                out["removed"].append(message_id)
            elif conn.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone():
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
    row["message"] = json.loads(row.pop("payload"))
    row["refused"] = json.loads(row["refused"]) if row["refused"] else None
    row["possible_duplicate"] = bool(row["possible_duplicate"])
    for name in EPOCH_FIELDS:
        if row[name] is not None:
            row[name] = int(row[name])
    return row


def list_page(
    conn,
    now: float,
    *,
    status: Status | None = None,
    active_only: bool = False,
    account_id: str | None = None,
    limit: int = 100,
    cursor: int = 0,
) -> tuple[list[dict], int | None]:
    """A page of messages in storage order, and the cursor of the next page (or None)."""
    where = ["rowid > :cursor"]
    params = {"cursor": cursor, "now": now, "limit": limit + 1}  # one more: is there a next page?
    if status is not None:
        where.append(f"({STATUS_SQL[status]})")
    if active_only:
        where.append("sent_ts IS NULL AND error_ts IS NULL")
    if account_id is not None:
        where.append("account_id = :account_id")
        params["account_id"] = account_id
    rows = conn.execute(
        f"SELECT rowid AS _rowid, {MESSAGE_COLUMNS} FROM messages "
        f"WHERE {' AND '.join(where)} ORDER BY rowid LIMIT :limit",
        params,
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = rows[-1]["_rowid"] if has_more else None
    for row in rows:
        del row["_rowid"]
    return [_message_out(row, now) for row in rows], next_cursor


def get(conn, message_id: str, now: float) -> dict | None:
    """One message with its attempts, or None."""
    row = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    record = _message_out(row, now)
    record["attempt_log"] = [
        {**a, "ts": int(a["ts"])}
        for a in conn.execute(
            "SELECT ts, outcome, smtp_code, detail, duration, process FROM attempts "
            "WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
    ]
    return record


def status_counts(conn, now: float) -> dict[str, int]:
    counts = {s.value: 0 for s in Status}
    for row in conn.execute(
        f"SELECT {STATUS_CASE_SQL} AS status, count(*) AS n FROM messages GROUP BY 1",
        {"now": now},
    ):
        counts[row["status"]] = row["n"]
    return counts


def pending_by_priority(conn) -> dict[int, int]:
    counts = {p: 0 for p in range(4)}
    for row in conn.execute(
        "SELECT priority, count(*) AS n FROM messages "
        "WHERE sent_ts IS NULL AND error_ts IS NULL GROUP BY priority"
    ):
        counts[row["priority"]] = row["n"]
    return counts


def oldest_ready_age(conn, now: float) -> float:
    """Seconds the oldest claimable message has waited (0 when none is ready)."""
    row = conn.execute(
        "SELECT min(ready_at) AS t FROM messages WHERE sent_ts IS NULL AND error_ts IS NULL "
        "AND ready_at <= ?",
        (now,),
    ).fetchone()
    return 0.0 if row["t"] is None else max(0.0, now - row["t"])
