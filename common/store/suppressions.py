"""The suppression list: addresses the dispatcher does not send to (docs/bounces.md).

Addresses are stored lower-cased and compared that way: mailbox names are case-insensitive
at every provider this service meets, and a bounce rarely repeats the case it was sent in.
One list for now; functions take the connection first so a tenant scope can follow it.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.store.db import write

COLUMNS = "address, reason, status, diagnostic, first_seen, last_seen, count"
REASONS = ("hard_bounce", "complaint", "manual")

# A known address is seen again: the newest reason and evidence win, the count grows.
_UPSERT = f"""
INSERT INTO suppressions ({COLUMNS})
VALUES (:address, :reason, :status, :diagnostic, :now, :now, 1)
ON CONFLICT(address) DO UPDATE SET reason = excluded.reason, status = excluded.status,
    diagnostic = excluded.diagnostic, last_seen = excluded.last_seen, count = count + 1
"""


def _entry(address: str, reason: str, status: str | None, diagnostic: str | None, now: float):
    return {"address": address.lower(), "reason": reason, "status": status,
            "diagnostic": diagnostic, "now": int(now)}  # fmt: skip


def add(
    conn, address: str, reason: str, status: str | None, diagnostic: str | None, now: float
) -> dict:
    """Suppress an address (or count it again); the stored entry."""
    with write(conn):
        add_in(conn, address, reason, status, diagnostic, now)
    return get(conn, address)


def add_in(conn, address, reason, status, diagnostic, now) -> None:
    """``add`` inside the caller's write transaction."""
    conn.execute(_UPSERT, _entry(address, reason, status, diagnostic, now))


def remove(conn, address: str) -> bool:
    """Take an address off the list; False when it was not on it."""
    with write(conn):
        conn.execute("DELETE FROM suppressions WHERE address = ?", (address.lower(),))
        return conn.changes() > 0


def get(conn, address: str) -> dict | None:
    """One entry, or None."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM suppressions WHERE address = ?", (address.lower(),)
    ).fetchone()


def page(conn, limit: int, after: str = "") -> tuple[list[dict], str | None]:
    """Entries in address order after ``after``, and the cursor of the next page (or None)."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM suppressions WHERE address > ? ORDER BY address LIMIT ?",
        (after.lower(), limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1]["address"] if more else None


def among(conn, addresses: Iterable[str]) -> set[str]:
    """Which of these addresses are suppressed (as given, not lower-cased)."""
    wanted = {address.lower(): address for address in addresses}
    if not wanted:
        return set()
    marks = ", ".join("?" * len(wanted))
    rows = conn.execute(
        f"SELECT address FROM suppressions WHERE address IN ({marks})", list(wanted)
    )
    return {wanted[row["address"]] for row in rows}


def counts(conn) -> dict[str, int]:
    """How many addresses are suppressed for each reason (every reason, 0 included)."""
    found = dict.fromkeys(REASONS, 0)
    for row in conn.execute("SELECT reason, count(*) AS n FROM suppressions GROUP BY reason"):
        found[row["reason"]] = row["n"]
    return found
