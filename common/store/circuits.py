"""The per-account circuit breaker, shared by every dispatcher through the database.

A connection failure (refused, timed out, TLS, 421, an AUTH refusal) opens the account's
circuit: no dispatcher claims the account's rows until ``open_until``.  Then the circuit is
half-open: the first claim takes one row of the account, the probe, and holds the circuit
for a lease (``claims.claim``), so only one dispatcher probes.  A probe that gets through
closes the circuit; one that fails opens it again for longer.  Failures of attempts that
began before the circuit last opened (other dispatchers' attempts of the same round) do not
count again.  The default ``[smtp]`` account's key is ''.  One row per (tenant, account),
whatever the queue holds, so an outage costs one attempt row per probe, not one per message.
"""

from __future__ import annotations

from collections.abc import Callable

from common.store.db import write


def key(account_id: str | None) -> str:
    """The circuits row key of an account (None: the default account)."""
    return account_id or ""


def trip(
    conn,
    tenant: str,
    account_id: str | None,
    now: float,
    started: float,
    reason: str,
    backoff: Callable[[int], float],
) -> float:
    """Open (or re-open) the account's circuit for ``backoff(failures in a row)`` seconds
    after an attempt begun at ``started`` failed to connect; when it may be probed again."""
    with write(conn):
        row = conn.execute(
            "SELECT failures, open_until, opened_at FROM circuits "
            "WHERE tenant_id = ? AND account = ?",
            (tenant, key(account_id)),
        ).fetchone()
        if row is not None and row["opened_at"] >= started:
            return row["open_until"]  # the same round: another dispatcher counted it
        failures = 1 if row is None else row["failures"] + 1
        until = now + backoff(failures)
        conn.execute(
            "INSERT INTO circuits(tenant_id, account, open_until, failures, since, opened_at, "
            "reason) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tenant_id, account) DO UPDATE SET "
            "open_until = excluded.open_until, failures = excluded.failures, "
            "opened_at = excluded.opened_at, reason = excluded.reason",
            (tenant, key(account_id), until, failures, now, now, reason),
        )
    return until


def unprobed(conn, tenant: str, account_id: str | None, now: float) -> None:
    """The probe never reached the server (its attachment failed, the rate limit held it):
    half-open again at once, for the next claim's probe."""
    with write(conn):
        conn.execute(
            "UPDATE circuits SET open_until = min(open_until, ?) "
            "WHERE tenant_id = ? AND account = ?",
            (now, tenant, key(account_id)),
        )


def close(conn, tenant: str, account_id: str | None) -> None:
    """The server took a transaction again: forget the account's failures."""
    with write(conn):
        conn.execute(
            "DELETE FROM circuits WHERE tenant_id = ? AND account = ?", (tenant, key(account_id))
        )


def probe_now(conn, now: float, tenant: str | None) -> int:
    """Make every open circuit (of the tenant; None: of all) half-open now (run-now --flush:
    the servers are back); one probe per account still goes first.  How many were open."""
    with write(conn):
        conn.execute(
            "UPDATE circuits SET open_until = :now WHERE open_until > :now "
            "AND (:tenant IS NULL OR tenant_id = :tenant)",
            {"now": now, "tenant": tenant},
        )
        return conn.changes()


def list_all(conn, now: float, tenant: str | None) -> list[dict]:
    """The circuits on record (of the tenant; None: of all), open or not (for /status)."""
    rows = conn.execute(
        "SELECT * FROM circuits WHERE :tenant IS NULL OR tenant_id = :tenant "
        "ORDER BY tenant_id, account",
        {"tenant": tenant},
    )
    return [
        {
            "tenant_id": row["tenant_id"],
            "account_id": row["account"] or None,
            "open": row["open_until"] > now,
            "open_until": int(row["open_until"]),
            "failures": row["failures"],
            "since": int(row["since"]),
            "reason": row["reason"],
        }
        for row in rows
    ]
