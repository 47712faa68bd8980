"""``asyncmail backup FILE`` and ``asyncmail restore FILE | --from-replica``: the database
copied while the service runs, and put back while it does not (docs/operations.md, "Backup
and restore", "Restore from the replica")."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import apsw

from cli import replication
from cli.output import OK, REFUSED, UNAVAILABLE, USAGE, CliError, emit, pairs, when
from cli.stack import pid_alive, supervisord_runs
from common import operations, store
from common.config import Config
from common.replication import describe as describe_replica


def _held(summary: dict) -> str:
    counts = " ".join(f"{status}:{n}" for status, n in summary["messages"].items())
    attempts = " ".join(f"{outcome}:{n}" for outcome, n in summary["attempts"].items())
    return pairs(
        {
            "schema version": summary["schema_version"],
            "messages": counts,
            "accounts": summary["accounts"],
            "attempts": attempts or "0",
            "size": f"{summary['bytes']} bytes",
            "last write": when(summary["last_write_ts"]),
        }
    )


def _checked_summary(path: Path) -> dict:
    """Integrity and schema of a copy, then what it holds; a bad copy is a CliError."""
    try:
        copy = store.backup.open_read_only(path)
    except (store.backup.BadCopy, apsw.Error) as exc:
        raise CliError(f"{path}: {exc}", REFUSED) from None
    try:
        store.backup.check(copy)
        return store.backup.summary(copy, time.time())
    except (store.backup.BadCopy, apsw.Error) as exc:
        raise CliError(f"{path}: {exc}", REFUSED) from None
    finally:
        copy.close()


def cmd_backup(config: Config, args) -> int:
    """Copy the database to FILE (mode 0600) while the service runs; check the copy."""
    target = Path(args.file)
    if target.exists():
        raise CliError(f"{target} exists; a backup never overwrites, choose a new name", REFUSED)
    if not config.database.exists():
        raise CliError(f"no database at {config.database}", UNAVAILABLE)
    staged = target.with_name(f".{target.name}.partial")  # FILE appears only once checked
    try:
        staged.unlink(missing_ok=True)
        store.backup.copy(store.db.open_database(config), staged)
        held = _checked_summary(staged)
        os.rename(staged, target)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}", UNAVAILABLE) from None
    finally:
        staged.unlink(missing_ok=True)
    emit(
        args,
        {"ok": True, "file": str(target), **held},
        f"backup written to {target} (mode 0600, integrity ok)\n{_held(held)}",
    )
    return OK


def _refuse_while_running(config: Config) -> None:
    """A restore under running processes would lose their writes or corrupt the file."""
    if supervisord_runs(config):
        raise CliError(
            f"supervisord runs for {config.var_dir}; stop the stack first (make stop)", REFUSED
        )
    if not config.database.exists():
        return
    beats = operations.heartbeats(store.db.open_database(config), time.time())
    # a clean stop leaves a fresh beat behind: only a live pid means a running process
    alive = [b["process"] for b in beats if not b["stale"] and pid_alive(b["pid"])]
    if alive:
        raise CliError(
            f"{', '.join(alive)} beat less than {operations.STALE_AFTER:.0f} s ago and still "
            "run; stop every process using this database first",
            REFUSED,
        )


def cmd_restore(config: Config, args) -> int:
    """Replace the database with backup FILE, or with the replica; refused while it runs."""
    if bool(args.file) == args.from_replica:
        raise CliError("restore: give a backup FILE or --from-replica (one of them)", USAGE)
    if args.timestamp is not None and not args.from_replica:
        raise CliError("restore: --timestamp goes with --from-replica", USAGE)
    _refuse_while_running(config)
    if args.from_replica:
        return _restore_from_replica(config, args)
    source = Path(args.file)
    held = _checked_summary(source)
    kept, suspects = _put_in_place(config, source)
    headline = f"restored {source} into {config.database}" + _suspects_note(
        suspects, "the backup was made"
    )
    _report(args, config, kept, held, headline, maybe_sent=suspects)
    return OK


def _put_in_place(config: Config, source: Path) -> tuple[Path | None, int]:
    """Make a checked copy the database: (the previous one, kept aside; rows marked suspect).

    Every unsent row the old database may have sent after the copy was made is marked
    ``maybe_sent``, so a second copy of it is reported possible_duplicate.
    """
    copy = store.backup.open_read_only(source)
    try:
        kept = store.backup.replace(config.database, copy)
    except OSError as exc:
        raise CliError(f"cannot replace {config.database}: {exc}", UNAVAILABLE) from None
    finally:
        copy.close()
    conn = store.db.open_database(config)  # WAL again, and migrated if the copy is older
    store.heartbeats.clear(conn)  # the copy's heartbeats describe processes of another time
    suspects = store.claims.suspect_after_restore(conn, time.time())
    conn.close()
    return kept, suspects


def _suspects_note(suspects: int, since: str) -> str:
    if not suspects:
        return ""
    return (
        f"\n{suspects} unsent messages may have been sent since {since}: sent "
        "again, they are reported possible_duplicate"
    )


def _report(args, config: Config, kept: Path | None, held: dict, headline: str, **extra) -> None:
    data = {"ok": True, "database": str(config.database), "previous": kept and str(kept)}
    human = f"{headline}\n{_held(held)}"
    if kept:
        human += f"\nthe previous database is kept as {kept}"
    emit(args, {**data, **held, **extra}, human)


def _restore_from_replica(config: Config, args) -> int:
    """Restore the replica (at --timestamp) into a new file, check it, put it in place."""
    if not config.replication_enabled:
        raise CliError("restore --from-replica: [replication] replica_url is not set", REFUSED)
    timestamp = _timestamp(args.timestamp)
    config.var_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    config.run_dir.mkdir(mode=0o700, exist_ok=True)
    staged = config.database.with_name(f".{config.database.name}.from-replica")
    for path in (staged, *(Path(f"{staged}{s}") for s in store.backup.SIDE_FILES)):
        path.unlink(missing_ok=True)
    try:
        replication.restore(config, staged, timestamp)
        held = _checked_summary(staged)
        kept, suspects = _put_in_place(config, staged)
    finally:
        for path in (staged, *(Path(f"{staged}{s}") for s in store.backup.SIDE_FILES)):
            path.unlink(missing_ok=True)
    headline = f"restored {_source(config, timestamp)} into {config.database}"
    headline += _suspects_note(suspects, "the replica's last sync")
    _report(args, config, kept, held, headline, maybe_sent=suspects, timestamp=timestamp)
    return OK


def _source(config: Config, timestamp: str | None) -> str:
    """'the replica s3://bucket/path (as of T)' for messages."""
    moment = f" as of {timestamp}" if timestamp else ""
    return f"the replica {describe_replica(config)}{moment}"


def _timestamp(text: str | None) -> str | None:
    """--timestamp as Litestream wants it (RFC 3339, UTC); epoch seconds are accepted too."""
    if text is None:
        return None
    try:
        moment = datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise CliError(
                f"--timestamp {text!r}: expected a time like 2026-01-31T12:00:00Z or epoch seconds",
                USAGE,
            ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without zone is this host's local time
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
