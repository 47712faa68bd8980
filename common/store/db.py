"""SQLite connections (apsw, WAL) and the numbered schema migrations.

Every process opens its own connection after it has forked.  Writers take the lock up front
with ``BEGIN IMMEDIATE`` (``write()`` below) so a busy database waits for ``BUSY_TIMEOUT_MS``
instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import apsw

BUSY_TIMEOUT_MS = 30_000  # a queue waits for its turn; a dispatcher's write lasts milliseconds

# Each entry moves the schema from user_version N to N+1.  Never edit a released entry:
# append a new one.
MIGRATIONS: list[str] = [
    # 1: the whole first schema
    """
    CREATE TABLE accounts (
        id               TEXT PRIMARY KEY,
        host             TEXT NOT NULL,
        port             INTEGER NOT NULL,
        user             TEXT,
        password         TEXT,              -- 'enc:'-prefixed when ASYNCMAIL_SECRET_KEY is set
        use_tls          INTEGER,           -- NULL: implicit TLS when port is 465
        starttls         INTEGER NOT NULL DEFAULT 0,
        ttl              INTEGER NOT NULL DEFAULT 300,
        timeout          REAL NOT NULL DEFAULT 30,
        limit_per_second INTEGER,
        limit_per_minute INTEGER,
        limit_per_hour   INTEGER,
        limit_per_day    INTEGER,
        limit_behavior   TEXT NOT NULL DEFAULT 'defer',
        batch_size       INTEGER,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    );

    CREATE TABLE messages (
        id                 TEXT PRIMARY KEY,
        account_id         TEXT REFERENCES accounts(id),   -- NULL: the [smtp] default account
        priority           INTEGER NOT NULL DEFAULT 2,
        payload            TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL,
        deferred_ts        INTEGER,
        sent_ts            INTEGER,
        error_ts           INTEGER,
        error              TEXT,
        reported_ts        INTEGER,
        -- scheduling: the earliest moment a dispatcher may claim the row
        -- (max of enqueue time, deferred_ts and lease expiry), so claiming is a range scan
        ready_at           REAL NOT NULL,
        enqueued_at        REAL NOT NULL,    -- precise enqueue time, for latency metrics
        lease_owner        TEXT,
        lease_expires      REAL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        smtp_code          INTEGER,
        refused            TEXT,             -- JSON {address: [code, text]} of refused recipients
        possible_duplicate INTEGER NOT NULL DEFAULT 0,
        outcome_at         REAL              -- precise time of the terminal outcome
    );
    -- claiming: per account and priority, the oldest ready rows
    CREATE INDEX messages_claim ON messages(account_id, priority, ready_at)
        WHERE sent_ts IS NULL AND error_ts IS NULL;
    -- reporting: terminal outcomes not yet reported, oldest first
    CREATE INDEX messages_unreported ON messages(outcome_at)
        WHERE reported_ts IS NULL AND outcome_at IS NOT NULL;
    -- retention purge
    CREATE INDEX messages_reported ON messages(reported_ts) WHERE reported_ts IS NOT NULL;

    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        account_id  TEXT,
        ts          REAL NOT NULL,
        outcome     TEXT NOT NULL,   -- sent, temporary, permanent, uncertain, deferred, rejected
        smtp_code   INTEGER,
        detail      TEXT,
        duration    REAL,
        process     TEXT
    );
    CREATE INDEX attempts_message ON attempts(message_id, id);
    CREATE INDEX attempts_account_ts ON attempts(account_id, ts);

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE heartbeats (
        process TEXT PRIMARY KEY,
        kind    TEXT NOT NULL,
        pid     INTEGER NOT NULL,
        ts      REAL NOT NULL
    );
    """,
    # 2: crash-resend visibility (dispatcher).  1 while the lease holder may already have sent
    # the row without its outcome being committed; a claim that finds it set on an expired
    # lease (the holder died) marks the message possible_duplicate.
    """
    ALTER TABLE messages ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: slow and hostile peers.
    #  accounts.deleted_at: an account deleted while some of its messages still owe a delivery
    #    report (or are in a dispatcher's hands) stays as a tombstone, without its password,
    #    until the reporter's purge finds none left; messages.account_id keeps its foreign key.
    #  accounts.max_recipients_per_transaction: RCPTs per SMTP transaction (RFC 5321 §4.5.3.1.8
    #    requires servers to take at least 100).
    #  messages.rcpt_done: JSON list of recipients a server already accepted in an earlier
    #    transaction of the message (452 or a 4xx for some recipients): never sent to again.
    #  circuits: the per-account circuit breaker, shared by every dispatcher ('' = [smtp]).
    """
    ALTER TABLE accounts ADD COLUMN deleted_at INTEGER;
    ALTER TABLE accounts ADD COLUMN max_recipients_per_transaction INTEGER NOT NULL DEFAULT 100;
    ALTER TABLE messages ADD COLUMN rcpt_done TEXT;
    CREATE TABLE circuits (
        account     TEXT PRIMARY KEY,   -- accounts.id, or '' for the [smtp] default account
        open_until  REAL NOT NULL,      -- no dispatcher claims the account's rows before this
        failures    INTEGER NOT NULL,   -- connection failures in a row
        since       REAL NOT NULL,      -- the first of them
        opened_at   REAL NOT NULL,      -- the last of them (attempts begun earlier: same round)
        reason      TEXT
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def _row_as_dict(cursor: apsw.Cursor, row: tuple) -> dict:
    return {name: value for (name, _), value in zip(cursor.get_description(), row, strict=True)}


def connect(path: str | os.PathLike, synchronous: str = "FULL", migrate: bool = True):
    """Open the database with the pragmas every connection needs; apply pending migrations."""
    path = Path(path)
    _ensure_private_dir(path.parent)
    existed = path.exists()
    conn = apsw.Connection(str(path))
    if not existed:
        os.chmod(path, 0o600)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    conn.row_trace = _row_as_dict
    conn.execute("PRAGMA journal_mode=WAL")
    set_synchronous(conn, synchronous)
    conn.execute("PRAGMA foreign_keys=ON")
    if migrate:
        migrate_schema(conn)
    return conn


def set_synchronous(conn: apsw.Connection, level: str | int) -> None:
    """This connection's fsync policy: OFF, NORMAL, FULL or EXTRA (or their numbers 0-3)."""
    if str(level).upper() not in {"OFF", "NORMAL", "FULL", "EXTRA", "0", "1", "2", "3"}:
        raise ValueError(f"not a synchronous level: {level!r}")
    conn.execute(f"PRAGMA synchronous={level}")


def ping(conn: apsw.Connection) -> None:
    """Raise unless the database answers a query (for health checks)."""
    conn.execute("SELECT 1").fetchall()


def _ensure_private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)


@contextlib.contextmanager
def write(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """A write transaction that holds the write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()["user_version"]


def migrate_schema(conn: apsw.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; safe when several processes start at once."""
    if schema_version(conn) >= SCHEMA_VERSION:
        return SCHEMA_VERSION
    with write(conn):
        current = schema_version(conn)  # re-read under the lock: another process may have won
        for number in range(current, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[number])
            conn.execute(f"PRAGMA user_version={number + 1}")
    return SCHEMA_VERSION


def open_database(config) -> apsw.Connection:
    """The configured database (``config.database`` at ``config.synchronous``), migrated."""
    return connect(config.database, config.synchronous)
