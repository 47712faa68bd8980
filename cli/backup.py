"""``asyncmail backup FILE`` and ``asyncmail restore FILE``: the database copied while the
service runs, and put back while it does not (docs/operations.md, "Backup and restore")."""

from __future__ import annotations

import os
import time
from pathlib import Path

import apsw

from cli.output import OK, REFUSED, UNAVAILABLE, CliError, emit, pairs
from cli.stack import pid_alive, supervisord_runs
from common import operations, store
from common.config import Config


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
    """Replace the database with backup FILE; refused while the service runs."""
    source = Path(args.file)
    _refuse_while_running(config)
    held = _checked_summary(source)
    copy = store.backup.open_read_only(source)
    try:
        kept = store.backup.replace(config.database, copy)
    except OSError as exc:
        raise CliError(f"cannot replace {config.database}: {exc}", UNAVAILABLE) from None
    finally:
        copy.close()
    conn = store.db.open_database(config)  # WAL again, and migrated if the copy is older
    store.heartbeats.clear(conn)  # the copy's heartbeats describe processes of another time
    conn.close()
    data = {"ok": True, "database": str(config.database), "previous": kept and str(kept), **held}
    human = f"restored {source} into {config.database}\n{_held(held)}"
    if kept:
        human += f"\nthe previous database is kept as {kept}"
    emit(args, data, human)
    return OK
