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
from common.store.schema import MIGRATIONS

BUSY_TIMEOUT_MS = 30_000  # a queue waits for its turn; a dispatcher's write lasts milliseconds
# Fallback only (SQLite's default is 1000 pages, ~4 MiB): while the reporter checkpoints the
# WAL never gets this long; when it is down, the commit that crosses it checkpoints instead.
WAL_AUTOCHECKPOINT_PAGES = 16_384  # 64 MiB at the default 4 KiB page
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file keeps after it restarts
# seconds between two tries of a caller with a shorter patience (``Patience``): quick at
# first, since most locks are held for milliseconds, then every 50 ms
RETRY_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)

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
    # A migration that rebuilds a table drops the old one: with foreign keys on, that would
    # delete (and cascade) its rows first.  The pragma is ignored inside a transaction.
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
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
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:  # rolled back: the database stays as it was
                raise apsw.ConstraintError(f"the migration broke foreign keys: {broken[:3]}")
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return SCHEMA_VERSION


def open_database(config, wait_seconds: float | None = None) -> apsw.Connection:
    """The configured database (``config.database`` at ``config.synchronous``), migrated."""
    return connect(config.database, config.synchronous, wait_seconds=wait_seconds)
