"""SMTP accounts: create or replace, read (never the password unless asked), delete."""

from __future__ import annotations

from common.store.db import write

ACCOUNT_COLUMNS = (
    "id, host, port, user, use_tls, starttls, ttl, timeout, limit_per_second, "
    "limit_per_minute, limit_per_hour, limit_per_day, limit_behavior, batch_size, "
    "created_at, updated_at"
)


def upsert(conn, account: dict, now: int) -> None:
    """Create or replace an account; ``account['password']`` is already in stored form."""
    columns = [c for c in account if c not in {"created_at", "updated_at"}]
    placeholders = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
    with write(conn):
        conn.execute(
            f"INSERT INTO accounts({', '.join(columns)}, created_at, updated_at) "
            f"VALUES ({placeholders}, :now, :now) "
            f"ON CONFLICT(id) DO UPDATE SET {updates}, updated_at = :now",
            {**account, "now": now},
        )


def _account_out(row: dict) -> dict:
    for flag in ("use_tls", "starttls"):
        if row.get(flag) is not None:
            row[flag] = bool(row[flag])
    return row


def list_all(conn) -> list[dict]:
    """Every account, without passwords."""
    rows = conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY id").fetchall()
    return [_account_out(row) for row in rows]


def get(conn, account_id: str, with_password: bool = False) -> dict | None:
    columns = ACCOUNT_COLUMNS + (", password" if with_password else "")
    row = conn.execute(f"SELECT {columns} FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return None if row is None else _account_out(row)


def ids(conn) -> set[str]:
    return {row["id"] for row in conn.execute("SELECT id FROM accounts")}


def count_unsent(conn, account_id: str) -> int:
    return conn.execute(
        "SELECT count(*) AS n FROM messages WHERE account_id = ? "
        "AND sent_ts IS NULL AND error_ts IS NULL",
        (account_id,),
    ).fetchone()["n"]


def delete(conn, account_id: str, purge: bool) -> tuple[bool, int]:
    """(deleted, unsent messages); refuses while unsent messages exist unless ``purge``."""
    with write(conn):
        if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
            return False, 0
        unsent = count_unsent(conn, account_id)
        if unsent and not purge:
            return False, unsent
        conn.execute("DELETE FROM messages WHERE account_id = ?", (account_id,))
        conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
        return True, unsent
