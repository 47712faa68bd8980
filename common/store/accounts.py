"""SMTP accounts: create or replace, read (never the password unless asked), delete.

An account deleted while some of its messages still owe the client a delivery report, or
are in a dispatcher's hands, stays behind as a tombstone (``deleted_at`` set, no password):
invisible to every reader here, so intake refuses new messages for it, while those
messages keep their foreign key and their reports go out carrying the account id.  The
reporter's purge drops the tombstone once no message refers to it (``drop_tombstones``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.store.db import write

ACCOUNT_COLUMNS = (
    "id, host, port, user, use_tls, starttls, ttl, timeout, limit_per_second, "
    "limit_per_minute, limit_per_hour, limit_per_day, limit_behavior, batch_size, "
    "max_recipients_per_transaction, created_at, updated_at"
)
_LIVE = "deleted_at IS NULL"
_UNSENT = "account_id = ? AND sent_ts IS NULL AND error_ts IS NULL"


def upsert(conn, account: dict, now: int) -> None:
    """Create or replace an account (a tombstone comes back to life); the password is
    already in stored form."""
    columns = [c for c in account if c not in {"created_at", "updated_at", "deleted_at"}]
    placeholders = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
    with write(conn):
        conn.execute(
            f"INSERT INTO accounts({', '.join(columns)}, created_at, updated_at) "
            f"VALUES ({placeholders}, :now, :now) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}, updated_at = :now, deleted_at = NULL",
            {**account, "now": now},
        )


def _account_out(row: dict) -> dict:
    for flag in ("use_tls", "starttls"):
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    return row


def list_all(conn) -> list[dict]:
    """Every account, without passwords."""
    rows = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {_LIVE} ORDER BY id"
    ).fetchall()
    return [_account_out(row) for row in rows]


def get(conn, account_id: str, with_password: bool = False) -> dict | None:
    columns = ACCOUNT_COLUMNS + (", password" if with_password else "")
    row = conn.execute(
        f"SELECT {columns} FROM accounts WHERE id = ? AND {_LIVE}", (account_id,)
    ).fetchone()
    return None if row is None else _account_out(row)


def ids(conn) -> set[str]:
    return {row["id"] for row in conn.execute(f"SELECT id FROM accounts WHERE {_LIVE}")}


@dataclass
class Deletion:
    """What ``delete`` did, or why it did nothing."""

    found: bool
    deleted: bool = False
    unsent: int = 0  # unsent messages found (refused without purge, else purged or in flight)
    purged: int = 0
    in_flight: list[str] = field(default_factory=list)  # held by a dispatcher: left alone
    awaiting_report: int = 0  # sent or failed, report not yet acknowledged: kept


def delete(conn, account_id: str, purge: bool, now: float) -> Deletion:
    """Delete an account; refused while unsent messages exist unless ``purge``.

    Purging never deletes a row a dispatcher holds (its outcome is still to be written):
    those are left ``in_flight``; a temporary outcome later fails them ("account deleted").
    Messages whose delivery report is not out yet are kept, and the account with them as a
    tombstone, so every report still reaches the client.
    """
    with write(conn):
        if (
            conn.execute(
                f"SELECT 1 FROM accounts WHERE id = ? AND {_LIVE}", (account_id,)
            ).fetchone()
            is None
        ):
            return Deletion(found=False)
        unsent = conn.execute(f"SELECT count(*) AS n FROM messages WHERE {_UNSENT}",
                              (account_id,)).fetchone()["n"]  # fmt: skip
        if unsent and not purge:
            return Deletion(found=True, unsent=unsent)
        in_flight = [r["id"] for r in conn.execute(
            f"SELECT id FROM messages WHERE {_UNSENT} AND lease_expires > ?", (account_id, now)
        )]  # fmt: skip
        conn.execute(
            f"DELETE FROM messages WHERE {_UNSENT} AND coalesce(lease_expires, 0) <= ?",
            (account_id, now),
        )
        purged = conn.changes()
        conn.execute(
            "DELETE FROM messages WHERE account_id = ? AND reported_ts IS NOT NULL", (account_id,)
        )
        kept = conn.execute(
            "SELECT count(*) AS n FROM messages WHERE account_id = ?", (account_id,)
        ).fetchone()["n"]
        if kept:
            conn.execute(
                "UPDATE accounts SET deleted_at = ?, password = NULL, updated_at = ? WHERE id = ?",
                (int(now), int(now), account_id),
            )
        else:
            conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
    return Deletion(True, True, unsent, purged, in_flight, kept - len(in_flight))


def drop_tombstones(conn) -> int:
    """Delete tombstones no message refers to any more; how many went."""
    dropped = 0
    rows = conn.execute("SELECT id FROM accounts WHERE deleted_at IS NOT NULL").fetchall()
    tombstones = [r["id"] for r in rows]
    for account_id in tombstones:
        with write(conn):
            conn.execute(
                "DELETE FROM accounts WHERE id = ? AND deleted_at IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM messages WHERE account_id = ?)",
                (account_id, account_id),
            )
            dropped += conn.changes()
    return dropped
