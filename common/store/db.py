"""SQLite connections (apsw, WAL), checkpoints and the numbered schema migrations.

Every process opens its own connection after it has forked.  Writers take the lock up front
with ``BEGIN IMMEDIATE`` (``write()`` below) so a busy database waits for ``BUSY_TIMEOUT_MS``
instead of failing on a read-to-write upgrade.

The WAL is kept small and off the hot paths: the reporter calls ``checkpoint()`` every
quarter of a second, so the commits of claims and enqueues never have to copy the WAL into the
database themselves.  SQLite's automatic checkpoint stays on, at ``WAL_AUTOCHECKPOINT_PAGES``,
as the fallback when the reporter is down, and ``JOURNAL_SIZE_LIMIT`` cuts a WAL file that
grew large (an outage, a long reader) back down when it next restarts from its beginning.
Every checkpoint here is PASSIVE, which never waits for and never overtakes a reader.  With
replication on, Litestream holds a read transaction from one of its own checkpoints to the
next, so ours copy nothing (measured: 0 frames) and the WAL restarts only when Litestream
has copied every frame; when Litestream is down they keep the WAL short as before
(docs/operations.md, "Checkpoints with replication").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import apsw

from common.addresses import angle_brackets

BUSY_TIMEOUT_MS = 30_000  # a queue waits for its turn; a dispatcher's write lasts milliseconds
# Fallback only (SQLite's default is 1000 pages, ~4 MiB): while the reporter checkpoints the
# WAL never gets this long; when it is down, the commit that crosses it checkpoints instead.
WAL_AUTOCHECKPOINT_PAGES = 16_384  # 64 MiB at the default 4 KiB page
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after it restarts
# seconds between two tries of a caller with a shorter patience (``Patience``): quick at
# first, since most locks are held for milliseconds, then every 50 ms
RETRY_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)

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
    # 3: the Message-ID header, chosen once at intake (the client's, else <random@domain>) so
    # every attempt and any duplicate carry the same one, and a bounce can find its message.
    # Rows stored before get the one the dispatcher derived for them until now, so a message
    # retried across the upgrade keeps its Message-ID.
    """
    ALTER TABLE messages ADD COLUMN message_id_header TEXT;
    UPDATE messages
        SET message_id_header = legacy_message_id(id, json_extract(payload, '$.message_id'));
    CREATE INDEX messages_message_id_header ON messages(message_id_header);
    """,
    # 4: bounces and suppression (docs/bounces.md).  One suppression list for now; tenants
    # will add their key in front of `address`.
    """
    CREATE TABLE suppressions (
        address     TEXT PRIMARY KEY,   -- lower-cased
        reason      TEXT NOT NULL,      -- hard_bounce, complaint, manual
        status      TEXT,               -- what said so: "550 5.1.1" (SMTP) or "5.1.1" (DSN)
        diagnostic  TEXT,
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL,
        count       INTEGER NOT NULL DEFAULT 1
    ) WITHOUT ROWID;

    -- the VERP token of the envelope sender bounce+<token>@verp_domain, set at intake while
    -- [bounces] verp_domain is configured
    ALTER TABLE messages ADD COLUMN verp_token TEXT;
    CREATE UNIQUE INDEX messages_verp_token ON messages(verp_token)
        WHERE verp_token IS NOT NULL;

    -- what a delivery status notification said about one recipient of a sent message
    CREATE TABLE bounces (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        recipient   TEXT NOT NULL,
        kind        TEXT NOT NULL,      -- hard (5.x.x), soft (4.x.x or no status)
        action      TEXT NOT NULL,      -- failed (reported as "bounced"), delayed (not reported)
        status      TEXT,               -- the DSN's status code, "5.1.1"
        diagnostic  TEXT,
        bounced_ts  REAL NOT NULL,      -- when the DSN was processed
        mail_key    TEXT NOT NULL,      -- the notification it came from (bounce_mails.key)
        reported_ts INTEGER
    );
    CREATE INDEX bounces_message ON bounces(message_id);
    CREATE INDEX bounces_ts ON bounces(bounced_ts);
    CREATE INDEX bounces_unreported ON bounces(id) WHERE reported_ts IS NULL AND action = 'failed';

    -- every mail of the bounce mailbox already handled, recorded before it is moved, so a
    -- connection lost between the two processes nothing twice
    CREATE TABLE bounce_mails (
        key     TEXT PRIMARY KEY,       -- the SHA-256 of its bytes
        result  TEXT NOT NULL,          -- processed, unmatched
        shape   TEXT,                   -- the DSN shape recognised (docs/bounces.md)
        ts      REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX bounce_mails_ts ON bounce_mails(ts);
    """,
    # 5: slow and hostile peers.
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


class Patience:
    """A busy handler: retry a locked database for ``seconds``, then let BusyError through.

    It waits with ``time.sleep`` in Python rather than inside SQLite, so under an evented
    server (gunicorn's gevent worker patches ``time.sleep``) the other requests go on while
    this one waits.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = 0.0

    def __call__(self, prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            self.started = now
        left = self.started + self.seconds - now
        if left <= 0:
            return False
        time.sleep(min(RETRY_STEPS[min(prior_calls, len(RETRY_STEPS) - 1)], left))
        return True


def connect(
    path: str | os.PathLike,
    synchronous: str = "FULL",
    migrate: bool = True,
    wait_seconds: float | None = None,
):
    """Open the database with the pragmas every connection needs; apply pending migrations.

    A locked database is waited for ``BUSY_TIMEOUT_MS``, or ``wait_seconds`` when given.
    """
    path = Path(path)
    _ensure_private_dir(path.parent)
    existed = path.exists()
    conn = apsw.Connection(str(path))
    if not existed:
        os.chmod(path, 0o600)
    if wait_seconds is None:
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    else:
        conn.set_busy_handler(Patience(wait_seconds))
    conn.row_trace = _row_as_dict
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
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


def checkpoint(conn: apsw.Connection) -> dict:
    """Copy the WAL into the database without blocking anyone (PASSIVE); SQLite's counts.

    ``log`` frames are in the WAL, ``checkpointed`` of them are now in the database; when
    they are equal (and no reader still uses the WAL) the next writer restarts the WAL.
    """
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def file_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes of the database file and of its WAL (0 when a file is absent)."""
    sizes = {}
    for name, suffix in (("database", ""), ("wal", "-wal")):
        try:
            sizes[name] = os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            sizes[name] = 0
    return sizes


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


def legacy_message_id(message_id: str, client_value: str | None) -> str:
    """The Message-ID of a message stored before migration 3: the client's, else a hash of id."""
    if client_value:
        return angle_brackets(client_value)
    return f"<{hashlib.sha256(message_id.encode()).hexdigest()[:32]}@asyncmail>"


class ForeignDatabase(apsw.SQLError):
    """The file holds tables this service did not create (a gnr-async-mail-service database)."""


def migrate_schema(conn: apsw.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; safe when several processes start at once."""
    if schema_version(conn) >= SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.create_scalar_function("legacy_message_id", legacy_message_id, 2, deterministic=True)
    with write(conn):
        current = schema_version(conn)  # re-read under the lock: another process may have won
        if current == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            # e.g. db_path of a reference config.ini still naming the reference's database
            raise ForeignDatabase(
                f"{conn.filename} holds tables but no async-mail-service schema (another "
                "service's database?); set [storage] db_path to a new file (docs/migration.md)"
            )
        for number in range(current, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[number])
            conn.execute(f"PRAGMA user_version={number + 1}")
    return SCHEMA_VERSION


def open_database(config, wait_seconds: float | None = None) -> apsw.Connection:
    """The configured database (``config.database`` at ``config.synchronous``), migrated."""
    return connect(config.database, config.synchronous, wait_seconds=wait_seconds)
