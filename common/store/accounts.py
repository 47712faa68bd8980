"""SMTP accounts: create or replace, read (never the password unless asked), delete.

An account deleted while some of its messages still owe the client a delivery report, or
are in a dispatcher's hands, stays behind as a tombstone (``deleted_at`` set, no password):
invisible to every reader here, so intake refuses new messages for it, while those
messages keep their foreign key and their reports go out carrying the account id.  The
reporter's purge drops the tombstone once no message refers to it (``drop_tombstones``).

Account ids are unique within a tenant: every function names the tenant it works in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.store.bounces import NO_BOUNCE_OWED
from common.store.db import write

ACCOUNT_COLUMNS = (
    "id, host, port, user, use_tls, starttls, ttl, timeout, limit_per_second, "
    "limit_per_minute, limit_per_hour, limit_per_day, limit_behavior, batch_size, "
    "max_recipients_per_transaction, created_at, updated_at"
)
_LIVE = "deleted_at IS NULL"
_UNSENT = "tenant_id = :tenant AND account_id = :id AND sent_ts IS NULL AND error_ts IS NULL"


def upsert(conn, tenant: str, account: dict, now: int) -> None:
    """Create or replace an account (a tombstone comes back to life); the password is
    already in stored form."""
    skip = {"created_at", "updated_at", "deleted_at", "tenant_id"}
    columns = [c for c in account if c not in skip]
    placeholders = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
    with write(conn):
        conn.execute(
            f"INSERT INTO accounts(tenant_id, {', '.join(columns)}, created_at, updated_at) "
            f"VALUES (:tenant_id, {placeholders}, :now, :now) ON CONFLICT(tenant_id, id) "
            f"DO UPDATE SET {updates}, updated_at = :now, deleted_at = NULL",
            {**account, "tenant_id": tenant, "now": now},
        )


def _account_out(row: dict) -> dict:
    for flag in ("use_tls", "starttls"):
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    return row


def list_all(conn, tenant: str) -> list[dict]:
    """Every account of the tenant, without passwords."""
    rows = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = ? AND {_LIVE} ORDER BY id",
        (tenant,),
    ).fetchall()
    return [_account_out(row) for row in rows]


def get(conn, tenant: str, account_id: str, with_password: bool = False) -> dict | None:
    """One account of the tenant (its password only when asked for), or None."""
    columns = ACCOUNT_COLUMNS + (", password" if with_password else "")
    row = conn.execute(
        f"SELECT {columns} FROM accounts WHERE tenant_id = ? AND id = ? AND {_LIVE}",
        (tenant, account_id),
    ).fetchone()
    return None if row is None else _account_out(row)


def ids(conn, tenant: str) -> set[str]:
    """The ids of the tenant's accounts."""
    rows = conn.execute(f"SELECT id FROM accounts WHERE tenant_id = ? AND {_LIVE}", (tenant,))
    return {row["id"] for row in rows}


def every_id(conn) -> set[tuple[str, str]]:
    """(tenant, account id) of every account of every tenant."""
    rows = conn.execute(f"SELECT tenant_id, id FROM accounts WHERE {_LIVE}")
    return {(row["tenant_id"], row["id"]) for row in rows}


@dataclass
class Deletion:
    """What ``delete`` did, or why it did nothing."""

    found: bool
    deleted: bool = False
    unsent: int = 0  # unsent messages found (refused without purge, else purged or in flight)
    purged: int = 0
    in_flight: list[str] = field(default_factory=list)  # held by a dispatcher: left alone
    awaiting_report: int = 0  # sent or failed, report not yet acknowledged: kept


def delete(conn, tenant: str, account_id: str, purge: bool, now: float) -> Deletion:
    """Delete an account; refused while unsent messages exist unless ``purge``.

    Purging never deletes a row a dispatcher holds (its outcome is still to be written):
    those are left ``in_flight``; a temporary outcome later fails them ("account deleted").
    Messages whose delivery report is not out yet are kept, and the account with them as a
    tombstone, so every report still reaches the client.
    """
    key = {"tenant": tenant, "id": account_id, "now": now, "now_s": int(now)}
    mine = "tenant_id = :tenant AND account_id = :id"
    with write(conn):
        if get(conn, tenant, account_id) is None:
            return Deletion(found=False)
        unsent = conn.execute(f"SELECT count(*) AS n FROM messages WHERE {_UNSENT}",
                              key).fetchone()["n"]  # fmt: skip
        if unsent and not purge:
            return Deletion(found=True, unsent=unsent)
        in_flight = [r["id"] for r in conn.execute(
            f"SELECT id FROM messages WHERE {_UNSENT} AND lease_expires > :now", key
        )]  # fmt: skip
        conn.execute(
            f"DELETE FROM messages WHERE {_UNSENT} AND coalesce(lease_expires, 0) <= :now", key
        )
        purged = conn.changes()
        conn.execute(
            f"DELETE FROM messages WHERE {mine} AND reported_ts IS NOT NULL AND {NO_BOUNCE_OWED}",
            key,
        )
        kept = conn.execute(f"SELECT count(*) AS n FROM messages WHERE {mine}", key).fetchone()["n"]
        if kept:
            conn.execute(
                "UPDATE accounts SET deleted_at = :now_s, password = NULL, updated_at = :now_s "
                "WHERE tenant_id = :tenant AND id = :id",
                key,
            )
        else:
            conn.execute("DELETE FROM accounts WHERE tenant_id = :tenant AND id = :id", key)
    return Deletion(True, True, unsent, purged, in_flight, kept - len(in_flight))


def drop_tombstones(conn) -> int:
    """Delete tombstones no message refers to any more; how many went."""
    dropped = 0
    rows = conn.execute("SELECT tenant_id, id FROM accounts WHERE deleted_at IS NOT NULL")
    for key in rows.fetchall():
        with write(conn):
            conn.execute(
                "DELETE FROM accounts WHERE tenant_id = :tenant_id AND id = :id "
                "AND deleted_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM messages "
                "WHERE tenant_id = :tenant_id AND account_id = :id)",
                key,
            )
            dropped += conn.changes()
    return dropped
