"""Online backups and restores of the database through SQLite's backup API.

A backup copies every page in one step, so it reads one snapshot: in WAL mode writers go on
meanwhile (a copy made in several steps would restart each time another process commits).
The copy is a single file in rollback-journal mode, created 0600 (it holds message bodies),
checked with ``PRAGMA integrity_check`` before it takes its final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import apsw

from common.store.db import SCHEMA_VERSION, _row_as_dict, schema_version
from common.store.messages import status_counts

SIDE_FILES = ("-wal", "-shm")  # SQLite's companions of a WAL-mode database file


class BadCopy(Exception):
    """The file is not a usable copy of this service's database; the message says why."""


def open_read_only(path: Path) -> apsw.Connection:
    """A read-only connection to a database file that must exist."""
    if not path.is_file():
        raise BadCopy(f"{path} is not a file")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.row_trace = _row_as_dict  # rows as dicts, like every connection of the store
    return conn


def copy(source: apsw.Connection, target: Path) -> None:
    """Copy the whole database to a new file ``target`` (mode 0600), as one snapshot."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dest = apsw.Connection(str(target))
    try:
        with dest.backup("main", source, "main") as job:
            job.step(-1)
        dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
    finally:
        dest.close()
    _fsync(target)


def check(conn: apsw.Connection) -> None:
    """Raise BadCopy unless the database is intact and has a schema this version can use."""
    try:
        problems = [row["integrity_check"] for row in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:
        raise BadCopy(f"not an SQLite database ({exc})") from None
    if problems != ["ok"]:
        raise BadCopy("integrity check failed: " + "; ".join(problems[:5]))
    version = schema_version(conn)
    if not 1 <= version <= SCHEMA_VERSION:
        raise BadCopy(
            f"schema version {version}: not a database of this service, or made by a newer "
            f"version (this one knows 1-{SCHEMA_VERSION})"
        )


# the newest moment the copy records: processes beat every second while the stack runs, so
# in a copy of a running service this is within a second of its last transaction
_LAST_WRITE = """
SELECT max(
    coalesce((SELECT max(ts) FROM heartbeats), 0),
    coalesce((SELECT max(ts) FROM attempts), 0),
    coalesce((SELECT max(enqueued_at) FROM messages), 0),
    coalesce((SELECT max(outcome_at) FROM messages), 0)
) AS t
"""


def summary(conn: apsw.Connection, now: float) -> dict:
    """What a copy holds: schema version, messages by status, accounts, attempts by outcome,
    size, and the time of its newest write (epoch seconds; None: an empty database)."""
    accounts = conn.execute("SELECT count(*) AS n FROM accounts").fetchone()["n"]
    last = conn.execute(_LAST_WRITE).fetchone()["t"]
    attempts = conn.execute("SELECT outcome, count(*) AS n FROM attempts GROUP BY outcome")
    pages = conn.execute("PRAGMA page_count").fetchone()["page_count"]
    page_size = conn.execute("PRAGMA page_size").fetchone()["page_size"]
    return {
        "schema_version": schema_version(conn),
        "messages": status_counts(conn, now),
        "accounts": accounts,
        "attempts": {row["outcome"]: row["n"] for row in attempts},
        "bytes": pages * page_size,
        "last_write_ts": round(last, 3) if last else None,
    }


def replace(database: Path, source: apsw.Connection) -> Path | None:
    """Make a copy of ``source`` the database at ``database``; nothing may have it open.

    The previous database is kept beside it (with its -wal, which may hold committed
    transactions) as ``<name>.before-restore-<time>``; returns that path (None: there was
    none).  A -wal or -shm left beside the new file would be replayed into it, so none is.
    """
    staged = database.with_name(f".{database.name}.restoring")
    for path in (staged, *(Path(f"{staged}{s}") for s in SIDE_FILES)):
        path.unlink(missing_ok=True)
    copy(source, staged)
    kept = None
    if database.exists():
        kept = database.with_name(
            f"{database.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        os.rename(database, kept)
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{database}-wal", f"{kept}-wal")
        Path(f"{database}-shm").unlink(missing_ok=True)
    os.rename(staged, database)
    _fsync(database.parent)
    # Litestream's own state about the previous file; kept, it would mix both databases
    shutil.rmtree(database.with_name(f".{database.name}-litestream"), ignore_errors=True)
    return kept


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
