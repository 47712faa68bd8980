"""Report-side SQL: which terminal outcomes still owe the upstream a delivery report, and the
retention purge of finished messages.

A row owes a report once a dispatcher has recorded its terminal outcome (``outcome_at`` set)
and until a 2xx answer from the upstream has been committed as ``reported_ts``.  The partial
index ``messages_unreported(outcome_at)`` holds exactly those rows, so finding the oldest
ones costs the same with a hundred rows stored or a million.
"""

from __future__ import annotations

from common.store.db import write

PURGE_BATCH = 500  # rows deleted per write transaction: short enough never to stall enqueues

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


def unreported_count(conn) -> int:
    """How many terminal outcomes still wait for an acknowledged report."""
    return conn.execute(
        "SELECT count(*) AS n FROM messages WHERE reported_ts IS NULL AND outcome_at IS NOT NULL"
    ).fetchone()["n"]


def oldest_unreported_age(conn, now: float) -> float:
    """Seconds since the oldest outcome still waiting for its delivery report (0 when none)."""
    row = conn.execute(
        "SELECT min(outcome_at) AS t FROM messages "
        "WHERE reported_ts IS NULL AND outcome_at IS NOT NULL"
    ).fetchone()
    return 0.0 if row["t"] is None else max(0.0, now - row["t"])


# Each picks, through its own partial index, rows finished before the cutoff.
_REPORTED_BEFORE = (
    "SELECT id FROM messages WHERE reported_ts IS NOT NULL AND reported_ts < ? LIMIT ?"
)
_UNREPORTED_BEFORE = (
    "SELECT id FROM messages WHERE reported_ts IS NULL AND outcome_at IS NOT NULL "
    "AND outcome_at < ? LIMIT ?"
)


def purge_finished(conn, before: float, reported_only: bool, batch: int = PURGE_BATCH) -> int:
    """Delete finished rows older than the cutoff, ``batch`` rows per short transaction.

    Reported rows count from their report.  With ``reported_only`` False (no upstream takes
    reports, so none will ever come) unreported rows count from their outcome.
    """
    removed = _purge(conn, _REPORTED_BEFORE, before, batch)
    if not reported_only:
        removed += _purge(conn, _UNREPORTED_BEFORE, before, batch)
    return removed


def _purge(conn, select: str, before: float, batch: int) -> int:
    removed = 0
    while True:
        with write(conn):
            conn.execute(f"DELETE FROM messages WHERE id IN ({select})", (before, batch))
            changed = conn.changes()
        removed += changed
        if changed < batch:
            return removed
