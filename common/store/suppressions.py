"""The suppression list: addresses the dispatcher does not send to (docs/bounces.md).

Addresses are stored lower-cased and compared that way: mailbox names are case-insensitive
at every provider this service meets, and a bounce rarely repeats the case it was sent in.
One list per tenant: every function names the tenant whose list it reads or changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.store.db import write

COLUMNS = "address, reason, status, diagnostic, first_seen, last_seen, count"
_KEY = "tenant_id = :tenant AND address = :address"
REASONS = ("hard_bounce", "complaint", "manual")

# A known address is seen again: the newest reason and evidence win, the count grows.
_UPSERT = f"""
INSERT INTO suppressions (tenant_id, {COLUMNS})
VALUES (:tenant, :address, :reason, :status, :diagnostic, :now, :now, 1)
ON CONFLICT(tenant_id, address) DO UPDATE SET reason = excluded.reason, status = excluded.status,
    diagnostic = excluded.diagnostic, last_seen = excluded.last_seen, count = count + 1
"""


def _entry(tenant: str, address: str, reason: str, status: str | None,
           diagnostic: str | None, now: float):  # fmt: skip
    return {"tenant": tenant, "address": address.lower(), "reason": reason, "status": status,
            "diagnostic": diagnostic, "now": int(now)}  # fmt: skip


def add(
    conn,
    tenant: str,
    address: str,
    reason: str,
    status: str | None,
    diagnostic: str | None,
    now: float,
) -> dict:
    """Suppress an address (or count it again); the stored entry."""
    with write(conn):
        add_in(conn, tenant, address, reason, status, diagnostic, now)
    return get(conn, tenant, address)


def add_in(conn, tenant, address, reason, status, diagnostic, now) -> None:
    """``add`` inside the caller's write transaction."""
    conn.execute(_UPSERT, _entry(tenant, address, reason, status, diagnostic, now))


def remove(conn, tenant: str, address: str) -> bool:
    """Take an address off the list; False when it was not on it."""
    with write(conn):
        conn.execute(
            f"DELETE FROM suppressions WHERE {_KEY}", {"tenant": tenant, "address": address.lower()}
        )
        return conn.changes() > 0


def get(conn, tenant: str, address: str) -> dict | None:
    """One entry, or None."""
    return conn.execute(
        f"SELECT {COLUMNS} FROM suppressions WHERE {_KEY}",
        {"tenant": tenant, "address": address.lower()},
    ).fetchone()


def page(conn, tenant: str, limit: int, after: str = "") -> tuple[list[dict], str | None]:
    """Entries in address order after ``after``, and the cursor of the next page (or None)."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM suppressions WHERE tenant_id = ? AND address > ? "
        "ORDER BY address LIMIT ?",
        (tenant, after.lower(), limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1]["address"] if more else None


def among(conn, tenant: str, addresses: Iterable[str]) -> set[str]:
    """Which of these addresses are suppressed (as given, not lower-cased)."""
    wanted = {address.lower(): address for address in addresses}
    if not wanted:
        return set()
    marks = ", ".join("?" * len(wanted))
    rows = conn.execute(
        f"SELECT address FROM suppressions WHERE tenant_id = ? AND address IN ({marks})",
        [tenant, *wanted],
    )
    return {wanted[row["address"]] for row in rows}


def counts(conn, tenant: str | None = None) -> dict[str, int]:
    """How many addresses are suppressed for each reason (every reason, 0 included), on the
    tenant's list (None: on every list)."""
    found = dict.fromkeys(REASONS, 0)
    for row in conn.execute(
        "SELECT reason, count(*) AS n FROM suppressions "
        "WHERE :tenant IS NULL OR tenant_id = :tenant GROUP BY reason",
        {"tenant": tenant},
    ):
        found[row["reason"]] = row["n"]
    return found
