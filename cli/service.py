"""``asyncmail`` set-up and scheduler commands: init, check-config, token, status, run-now,
suspend, activate, cleanup.  Each is ``cmd_x(config, args) -> exit code``; the actions
themselves are ``common.operations``, shared with the API.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cli.output import OK, CliError, emit, pairs, table
from common import crypto, operations, store
from common.config import Config


def cmd_init(config: Config, args) -> int:
    """Create var/ (mode 0700) and the database; safe to run while the service runs."""
    for directory in (config.var_dir, config.run_dir, config.log_dir, config.ratelimit_dir):
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    conn = store.db.open_database(config)
    version = store.db.schema_version(conn)
    conn.close()
    data = {
        "ok": True,
        "database": str(config.database),
        "var_dir": str(config.var_dir),
        "schema_version": version,
    }
    emit(args, data, f"ready: database={config.database} schema_version={version}")
    return OK


def _config_view(config: Config) -> dict:
    """Every setting; secrets only say whether they are set."""
    view = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.repr:
            value = None if value is None else "(set)"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        view[f.name] = value
    view["database"] = str(config.database)
    return view


def cmd_check_config(config: Config, args) -> int:
    """Load the configuration; print the effective settings (secrets masked) or the error."""
    view = _config_view(config)
    emit(args, {"ok": True, "config": view}, pairs(view))
    return OK


def cmd_token(config: Config, args) -> int:
    """Print a new random API token for [server] api_token."""
    token = crypto.new_token()
    emit(args, {"ok": True, "token": token}, token)
    return OK


# -- the scheduler ----------------------------------------------------------------------------
def cmd_status(config: Config, args) -> int:
    """Queue counts, the scheduler switch and every process's last heartbeat."""
    data = operations.status(store.db.open_database(config), config, time.time())
    head = {
        "active": "yes" if data["active"] else "no (suspended)",
        "test_mode": "yes" if config.test_mode else "no",
        **data["counts"],
        "pending by priority": " ".join(f"{p}:{n}" for p, n in data["pending_by_priority"].items()),
        "oldest ready age": f"{data['oldest_ready_age_seconds']} s",
    }
    human = pairs(head)
    if data["processes"]:
        human += "\n\n" + table(data["processes"], ["process", "kind", "pid", "age_seconds"])
    emit(args, {"ok": True, **data}, human)
    return OK


def cmd_run_now(config: Config, args) -> int:
    """Wake every dispatcher and the reporter now (in test_mode: allow one round)."""
    woken = operations.run_now(store.db.open_database(config), config, time.time())
    emit(args, {"ok": True, "woken": woken}, f"woke {woken} processes")
    return OK


def cmd_suspend(config: Config, args) -> int:
    """Stop claiming new messages (persisted); reporting continues."""
    operations.set_active(store.db.open_database(config), config, False)
    emit(args, {"ok": True, "active": False}, "suspended: dispatchers claim nothing new")
    return OK


def cmd_activate(config: Config, args) -> int:
    """Resume claiming messages (persisted) and wake the dispatchers."""
    operations.set_active(store.db.open_database(config), config, True)
    emit(args, {"ok": True, "active": True}, "active: dispatchers claim again")
    return OK


def cmd_cleanup(config: Config, args) -> int:
    """Delete messages finished longer ago than --older-than (default: the retention)."""
    conn = store.db.open_database(config)
    try:
        done = operations.cleanup(conn, config, time.time(), args.older_than)
    except operations.Refused as exc:
        raise CliError(str(exc).replace("'older_than_seconds'", "--older-than")) from None
    data = {"ok": True, "removed": done.removed}
    if done.note:
        data["note"] = done.note
    emit(args, data, done.note or f"removed {done.removed} finished messages")
    return OK
