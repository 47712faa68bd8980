"""Report-side SQL: which terminal outcomes still owe the upstream a delivery report.

A row owes a report once a dispatcher has recorded its terminal outcome (``outcome_at`` set)
and until a 2xx answer from the upstream has been committed as ``reported_ts``.  The partial
index ``messages_unreported(outcome_at)`` holds exactly those rows, so finding the oldest
ones costs the same with a hundred rows stored or a million.
"""

from __future__ import annotations

import json

from common.db import write
from common.status import status_of

# The reference's seven fields come first and keep their meaning; ours follow.
REFERENCE_FIELDS = ("id", "account_id", "priority", "sent_ts", "error_ts", "error", "deferred_ts")

_UNREPORTED = """
SELECT id, account_id, priority, sent_ts, error_ts, error, deferred_ts,
       attempts, smtp_code, refused, possible_duplicate, outcome_at
FROM messages
WHERE reported_ts IS NULL AND outcome_at IS NOT NULL
ORDER BY outcome_at
LIMIT ?
"""

# Marks a row only if its outcome is still the one that was posted: a message resubmitted
# and failed again between the POST and this commit owes a fresh report.
_MARK = (
    "UPDATE messages SET reported_ts = ? WHERE id = ? AND outcome_at = ? AND reported_ts IS NULL"
)


def fetch_unreported(conn, limit: int) -> list[dict]:
    """The oldest terminal outcomes not yet reported, oldest first, at most ``limit``."""
    return conn.execute(_UNREPORTED, (limit,)).fetchall()


def mark_reported(conn, rows: list[dict], reported_ts: int) -> int:
    """Mark exactly these rows (as fetched) reported, in one transaction; returns the count."""
    with write(conn):
        before = conn.total_changes()
        conn.executemany(_MARK, [(reported_ts, row["id"], row["outcome_at"]) for row in rows])
        return conn.total_changes() - before


def _epoch(value) -> int | None:
    return None if value is None else int(value)


def _refused(text: str | None):
    """The stored JSON of refused recipients; unparsable text is passed on, never a blocker."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def report_item(row: dict, now: float) -> dict:
    """One ``delivery_report`` item: the reference's seven fields first, unchanged, then ours."""
    item = {
        "id": row["id"],
        "account_id": row["account_id"],
        "priority": row["priority"],
        "sent_ts": _epoch(row["sent_ts"]),
        "error_ts": _epoch(row["error_ts"]),
        "error": row["error"],
        "deferred_ts": _epoch(row["deferred_ts"]),
        "status": status_of(row, now).value,
        "attempts": row["attempts"],
        "smtp_code": row["smtp_code"],
        "refused": _refused(row["refused"]),
    }
    if row["possible_duplicate"]:
        item["possible_duplicate"] = True
    return item


def unreported_count(conn) -> int:
    """How many terminal outcomes still wait for an acknowledged report."""
    return conn.execute(
        "SELECT count(*) AS n FROM messages WHERE reported_ts IS NULL AND outcome_at IS NOT NULL"
    ).fetchone()["n"]
