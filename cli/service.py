"""``asyncmail`` set-up and scheduler commands: init, check-config, token, seal-password,
status, run-now, retry, suspend, activate, cleanup.  Each is ``cmd_x(config, args) -> exit
code``; the actions themselves are ``common.operations``, shared with the API.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import sys
import time
from pathlib import Path

from cli.output import OK, REFUSED, UNAVAILABLE, UNHEALTHY, USAGE, CliError, emit, pairs, table
from cli.stack import supervisord_answers
from cli.tenants import scope, tenant
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


def cmd_seal_password(config: Config, args) -> int:
    """Print a password sealed with ASYNCMAIL_SECRET_KEY for the INI file (enc:...).

    For [bounces] imap_password and [smtp] password: the file then holds no clear password.
    The password comes from --password-env, else a prompt (a terminal) or one line of stdin.
    """
    if not config.secret_key:
        raise CliError("ASYNCMAIL_SECRET_KEY is not set: there is no key to seal with")
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise CliError(f"--password-env: the variable {args.password_env} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass("password to seal: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password given")
    sealed = crypto.seal(password, config.secret_key)
    emit(args, {"ok": True, "sealed": sealed}, sealed)
    return OK


# -- the scheduler ----------------------------------------------------------------------------
def cmd_status(config: Config, args) -> int:
    """Queue counts, the scheduler switch and every process's last heartbeat.

    The health check: exit 0 when healthy, 1 when a heartbeat is stale (or supervisord runs
    and a dispatcher, the reporter or a configured bouncer has not beaten), 3 when the
    database cannot be read.
    """
    if not config.database.exists():
        raise CliError(f"no database at {config.database} (asyncmail init creates it)", UNAVAILABLE)
    conn = store.db.open_database(config)
    data = operations.status(conn, config, time.time(), scope(conn, args))
    runs = supervisord_answers(config)
    problems = operations.health(data["processes"], runs, config.bounces_enabled)
    head = {
        **({"tenant": data["tenant"]} if "tenant" in data else {}),
        "active": "yes" if data["active"] else "no (suspended)",
        "test_mode": "yes" if config.test_mode else "no",
        **data["counts"],
        "pending by priority": " ".join(f"{p}:{n}" for p, n in data["pending_by_priority"].items()),
        "oldest ready age": f"{data['oldest_ready_age_seconds']} s",
    }
    if "replication" in data:  # the whole service's view
        problems += operations.replication_problems(data["replication"], runs)
        head["replication"] = _replication_line(data["replication"])
    head["health"] = "ok" if not problems else "UNHEALTHY"
    human = pairs(head)
    if len(data.get("tenants", ())) > 1:
        rows = [{**t, **t["counts"], "state": _tenant_state(t)} for t in data["tenants"]]
        columns = ["id", "state", "queued", "deferred", "sending", "sent", "error", "unreported"]
        human += "\n\n" + table(rows, columns)
    if data["processes"]:
        rows = [{**p, "stale": "STALE" if p["stale"] else ""} for p in data["processes"]]
        human += "\n\n" + table(rows, ["process", "kind", "pid", "age_seconds", "stale"])
    else:
        human += "\n\nno process has recorded a heartbeat (the stack is not running)"
    human += "".join(f"\nproblem: {p}" for p in problems)
    emit(args, {"ok": True, **data, "healthy": not problems, "problems": problems}, human)
    return UNHEALTHY if problems else OK


def _tenant_state(tenant: dict) -> str:
    if not tenant["active"]:
        return "SUSPENDED"
    return "active" if tenant["dispatching"] else "paused by itself"


def _replication_line(state: dict) -> str:
    if not state["enabled"]:
        return "off"
    if not state["up"]:
        return f"DOWN to {state['replica']}: {state['problem']}"
    if state["lag_seconds"] is None:
        return f"to {state['replica']}: {state['problem']}"
    return f"to {state['replica']}, lag {state['lag_seconds']:.1f} s"


def cmd_run_now(config: Config, args) -> int:
    """Wake every dispatcher and the reporter now (in test_mode: allow one round)."""
    conn = store.db.open_database(config)
    done = operations.run_now(conn, config, time.time(), args.flush, scope(conn, args))
    data = {"ok": True, "woken": done.woken}
    human = f"woke {done.woken} processes"
    if args.flush:
        data["flushed"], data["probing"] = done.flushed, done.probing
        human += f"; {done.flushed} messages waiting for a retry are ready now"
        human += f", {done.probing} failing accounts are probed now"
    emit(args, data, human)
    return OK


def cmd_retry(config: Config, args) -> int:
    """Requeue errored messages and messages waiting for a retry: they are sent now."""
    conn = store.db.open_database(config)
    try:
        done = operations.retry(
            conn,
            config,
            tenant(conn, args),
            time.time(),
            ids=args.ids or None,
            account_id=args.account,
            status=args.status,
            reset_attempts=args.reset_attempts,
        )
    except operations.Refused as exc:
        code = REFUSED if exc.kind is operations.Refusal.NOT_FOUND else USAGE
        raise CliError(_cli_words(str(exc)), code) from None
    data = {"ok": True, "requeued": done.requeued, "attempts": done.attempts}
    human = f"requeued {done.requeued} messages (attempt counts {done.attempts})"
    if args.ids:
        data |= {"not_found": done.not_found, "not_retryable": done.not_retryable}
        human += "".join(f"\nnot found: {i}" for i in done.not_found)
        human += "".join(
            f"\nnot retryable (sent, queued or in flight): {i}" for i in done.not_retryable
        )
    emit(args, data, human)
    return REFUSED if args.ids and done.requeued < len(set(args.ids)) else OK


def _cli_words(text: str) -> str:
    """An operations sentence with the API's field names as this command's options."""
    for field, option in (
        ("'ids'", "IDS"),
        ("'account_id'", "--account"),
        ("'status'", "--status"),
    ):
        text = text.replace(field, option)
    return text.replace("GET /accounts (asyncmail accounts list)", "asyncmail accounts list")


def cmd_suspend(config: Config, args) -> int:
    """Stop claiming new messages (persisted); reporting continues."""
    conn = store.db.open_database(config)
    operations.set_active(conn, config, False, scope(conn, args))
    emit(args, {"ok": True, "active": False}, "suspended: dispatchers claim nothing new")
    return OK


def cmd_activate(config: Config, args) -> int:
    """Resume claiming messages (persisted) and wake the dispatchers."""
    conn = store.db.open_database(config)
    operations.set_active(conn, config, True, scope(conn, args))
    emit(args, {"ok": True, "active": True}, "active: dispatchers claim again")
    return OK


def cmd_cleanup(config: Config, args) -> int:
    """Delete messages finished longer ago than --older-than (default: the retention)."""
    conn = store.db.open_database(config)
    try:
        done = operations.cleanup(conn, config, time.time(), args.older_than, scope(conn, args))
    except operations.Refused as exc:
        raise CliError(str(exc).replace("'older_than_seconds'", "--older-than")) from None
    data = {"ok": True, "removed": done.removed}
    if done.note:
        data["note"] = done.note
    emit(args, data, done.note or f"removed {done.removed} finished messages")
    return OK
