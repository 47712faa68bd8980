"""Report-side SQL: which terminal outcomes still owe the upstream a delivery report, and the
retention purge of finished messages.

A row owes a report once a dispatcher has recorded its terminal outcome (``outcome_at`` set)
and until a 2xx answer from the upstream has been committed as ``reported_ts``.  The partial
index ``messages_unreported(outcome_at)`` holds exactly those rows, so finding the oldest
ones costs the same with a hundred rows stored or a million.  Each tenant has its own report
stream, so the index leads with the tenant and every reader names one.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.store.bounces import NO_BOUNCE_OWED
from common.store.db import write

PURGE_BATCH = 500  # rows deleted per write transaction: short enough never to stall enqueues

_UNREPORTED = """
SELECT id, account_id, priority, sent_ts, error_ts, error, deferred_ts,
       attempts, smtp_code, refused, possible_duplicate, outcome_at
FROM messages INDEXED BY messages_unreported
WHERE tenant_id = ? AND reported_ts IS NULL AND outcome_at IS NOT NULL
ORDER BY outcome_at
LIMIT ?
"""

# Marks a row only if its outcome is still the one that was posted: a message resubmitted
# and failed again between the POST and this commit owes a fresh report.
_MARK = (
    "UPDATE messages SET reported_ts = ? WHERE tenant_id = ? AND id = ? AND outcome_at = ? "
    "AND reported_ts IS NULL"
)
_OWED = (
    "reported_ts IS NULL AND outcome_at IS NOT NULL AND (:tenant IS NULL OR tenant_id = :tenant)"
)


def fetch_unreported(conn, tenant: str, limit: int) -> list[dict]:
    """The tenant's oldest terminal outcomes not yet reported, oldest first, at most ``limit``."""
    return conn.execute(_UNREPORTED, (tenant, limit)).fetchall()


def mark_reported(conn, tenant: str, rows: list[dict], reported_ts: int) -> int:
    """Mark exactly these rows (as fetched) reported, in one transaction; returns the count."""
    with write(conn):
        before = conn.total_changes()
        conn.executemany(
            _MARK, [(reported_ts, tenant, row["id"], row["outcome_at"]) for row in rows]
        )
        return conn.total_changes() - before


def unreported_count(conn, tenant: str | None = None) -> int:
    """How many terminal outcomes (of the tenant; None: of all) still wait for a report."""
    return conn.execute(
        f"SELECT count(*) AS n FROM messages WHERE {_OWED}", {"tenant": tenant}
    ).fetchone()["n"]


def oldest_unreported_age(conn, now: float, tenant: str | None = None) -> float:
    """Seconds since the oldest outcome (of the tenant; None: of all) still waiting for its
    delivery report (0 when none)."""
    row = conn.execute(
        f"SELECT min(outcome_at) AS t FROM messages WHERE {_OWED}", {"tenant": tenant}
    ).fetchone()
    return 0.0 if row["t"] is None else max(0.0, now - row["t"])


# Each picks, through its own partial index, rows finished before the cutoff.
_REPORTED_BEFORE = (
    "SELECT rowid FROM messages WHERE reported_ts IS NOT NULL AND reported_ts < :before "
    f"AND (:tenant IS NULL OR tenant_id = :tenant) AND {NO_BOUNCE_OWED} LIMIT :batch"
)
_UNREPORTED_BEFORE = (
    "SELECT rowid FROM messages INDEXED BY messages_unreported WHERE tenant_id = :tenant "
    "AND reported_ts IS NULL AND outcome_at IS NOT NULL AND outcome_at < :before LIMIT :batch"
)


def purge_finished(
    conn,
    before: float,
    unreported_of: Iterable[str] = (),
    batch: int = PURGE_BATCH,
    tenant: str | None = None,
) -> int:
    """Delete finished rows (of one tenant; None: of all) older than the cutoff, ``batch``
    rows per short transaction.

    Reported rows count from their report.  Those of the tenants ``unreported_of`` (no
    upstream takes their reports, so none will ever come) count from their outcome.
    """
    removed = _purge(conn, _REPORTED_BEFORE, {"before": before, "batch": batch, "tenant": tenant})
    for silent in unreported_of:
        removed += _purge(
            conn, _UNREPORTED_BEFORE, {"before": before, "batch": batch, "tenant": silent}
        )
    return removed


def _purge(conn, select: str, params: dict) -> int:
    removed = 0
    while True:
        with write(conn):
            conn.execute(f"DELETE FROM messages WHERE rowid IN ({select})", params)
            changed = conn.changes()
        removed += changed
        if changed < params["batch"]:
            return removed
