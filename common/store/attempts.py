"""The attempts table read back: send starts for the rate-limit ledger, and what the operator
sees (usage per limit window, sends and failures per minute, the latest failures).

Every query is per account of a tenant (or per tenant) and bounded in time, so it walks the
``attempts_account_ts`` (``attempts_tenant_ts``) index, not the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.enums import SEND_OUTCOMES, Outcome

_SEND_OUTCOMES = sorted(SEND_OUTCOMES)  # attempts that began an SMTP transaction (took a slot)
_SEND_IN = ", ".join(f"'{o.value}'" for o in _SEND_OUTCOMES)
# attempts at the server that did not deliver (a rate-limit deferral is not a failure)
FAILED_OUTCOMES = (Outcome.TEMPORARY, Outcome.PERMANENT, Outcome.UNCERTAIN)
_FAILED_IN = ", ".join(f"'{o.value}'" for o in (*FAILED_OUTCOMES, Outcome.REJECTED))


def send_starts(conn, tenant: str, account_id: str | None, since: float) -> list[float]:
    """Start times of the account's sends at or after ``since``, oldest first (ledger rebuild)."""
    rows = conn.execute(
        f"SELECT ts FROM attempts WHERE tenant_id = ? AND account_id IS ? AND ts >= ? "
        f"AND outcome IN ({_SEND_IN}) ORDER BY ts",
        (tenant, account_id, since),
    )
    return [row["ts"] for row in rows]


def tenant_send_starts(conn, tenant: str, since: float) -> list[float]:
    """Start times of the sends of every account of the tenant at or after ``since``."""
    rows = conn.execute(
        f"SELECT ts FROM attempts INDEXED BY attempts_tenant_ts WHERE tenant_id = ? "
        f"AND ts >= ? AND outcome IN ({_SEND_IN}) ORDER BY ts",
        (tenant, since),
    )
    return [row["ts"] for row in rows]


def sends_in_windows(
    conn, tenant: str, account_id: str | None, now: float, windows: Iterable[float]
) -> dict[float, int]:
    """{window seconds: sends started in (now - seconds, now]} for the account."""
    windows = list(windows)
    if not windows:
        return {}
    sums = ", ".join(
        f"coalesce(sum(ts > :now - {float(w)!r}), 0) AS w{n}" for n, w in enumerate(windows)
    )
    row = conn.execute(
        f"SELECT {sums} FROM attempts WHERE tenant_id = :tenant AND account_id IS :account_id "
        f"AND ts > :since AND ts <= :now AND outcome IN ({_SEND_IN})",
        {"tenant": tenant, "account_id": account_id, "now": now, "since": now - max(windows)},
    ).fetchone()
    return {w: row[f"w{n}"] for n, w in enumerate(windows)}


def nth_latest_send(
    conn, tenant: str, account_id: str | None, n: int, since: float
) -> float | None:
    """Start of the account's ``n``-th most recent send after ``since`` (None: fewer)."""
    row = conn.execute(
        f"SELECT ts FROM attempts WHERE tenant_id = ? AND account_id IS ? AND ts > ? "
        f"AND outcome IN ({_SEND_IN}) ORDER BY ts DESC LIMIT 1 OFFSET ?",
        (tenant, account_id, since, n - 1),
    ).fetchone()
    return None if row is None else row["ts"]


Account = tuple[str, str | None]  # (tenant, account id; None: the [smtp] account)


def per_minute(
    conn, accounts: Iterable[Account], since: float, now: float
) -> dict[Account, dict[int, dict[str, int]]]:
    """{account: {minute index since ``since``: {outcome: count}}} of the attempts made."""
    out: dict[Account, dict[int, dict[str, int]]] = {}
    for tenant, account_id in accounts:
        buckets: dict[int, dict[str, int]] = {}
        for row in conn.execute(
            "SELECT CAST((ts - :since) / 60 AS INTEGER) AS minute, outcome, count(*) AS n "
            "FROM attempts WHERE tenant_id = :tenant AND account_id IS :account_id "
            "AND ts >= :since AND ts <= :now GROUP BY 1, 2",
            {"tenant": tenant, "account_id": account_id, "since": since, "now": now},
        ):
            buckets.setdefault(row["minute"], {})[row["outcome"]] = row["n"]
        out[(tenant, account_id)] = buckets
    return out


def recent_failures(conn, accounts: Iterable[Account], since: float, limit: int) -> list[dict]:
    """The newest failed attempts since ``since`` (any of these accounts), newest first."""
    found: list[dict] = []
    for tenant, account_id in accounts:
        found += conn.execute(
            "SELECT ts, tenant_id, message_id, account_id, outcome, smtp_code, detail "
            f"FROM attempts WHERE tenant_id = ? AND account_id IS ? AND ts >= ? "
            f"AND outcome IN ({_FAILED_IN}) ORDER BY ts DESC LIMIT ?",
            (tenant, account_id, since, limit),
        ).fetchall()
    return sorted(found, key=lambda row: row["ts"], reverse=True)[:limit]


def last_send_outcome(conn, tenant: str, account_id: str | None, since: float) -> str | None:
    """The outcome of the account's latest attempt at its server since ``since`` (or None)."""
    row = conn.execute(
        "SELECT outcome FROM attempts WHERE tenant_id = ? AND account_id IS ? AND ts >= ? "
        f"AND outcome IN ({_SEND_IN}) ORDER BY ts DESC LIMIT 1",
        (tenant, account_id, since),
    ).fetchone()
    return None if row is None else row["outcome"]
