"""The operator chores of ``asyncmail``, working directly on the database (no web process).

Accounts live in ``common.cli_accounts``, the supervisord launcher in ``common.cli_stack``.

Each command is ``cmd_x(config, args) -> exit code``.  Queries live in ``common.store``;
enqueueing goes through ``common.intake.accept_batch`` exactly like the API's add-messages.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from common import crypto, db, intake, store, wakeup
from common.cli_eml import PayloadError, payload_from_eml, payload_from_flags, read_text
from common.cli_output import OK, REFUSED, CliError, emit, pairs, table, when
from common.config import Config
from common.models import MAX_BATCH, parse_priority
from common.status import Status


def connect(config: Config):
    """The database, created and migrated if needed."""
    return db.connect(config.database, config.synchronous)


# -- set-up ---------------------------------------------------------------------------------
def cmd_init(config: Config, args) -> int:
    """Create var/ (mode 0700) and the database; safe to run while the service runs."""
    for directory in (config.var_dir, config.run_dir, config.log_dir, config.ratelimit_dir):
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    conn = connect(config)
    version = db.schema_version(conn)
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


# -- sending --------------------------------------------------------------------------------
MESSAGE_FLAGS = (
    "id",
    "sender",
    "from_name",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "return_path",
    "subject",
    "body",
    "body_file",
    "html",
    "message_id",
    "header",
    "attach",
)


def _items_from_json(text: str) -> tuple[list, object]:
    """(messages, default_priority) from a message, a list, or an add-messages body."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--json: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "messages" in data:
        if not isinstance(data["messages"], list):
            raise CliError("--json: 'messages' must be a list")
        return data["messages"], data.get("default_priority")
    return (data if isinstance(data, list) else [data]), None


def _items(args) -> tuple[list, object]:
    if args.json_file is not None or args.eml is not None:
        used = [f for f in MESSAGE_FLAGS if getattr(args, f) not in (None, False, [])]
        overrides = [args.account, args.priority, args.deferred_ts]
        if args.json_file is not None and (used or any(v is not None for v in overrides)):
            raise CliError("--json takes the whole message from the file; drop the other flags")
        if args.eml is not None and [f for f in used if f != "id"]:
            raise CliError(
                "--eml takes the message from the file; only --id, --account, "
                "--priority and --deferred-ts may be added"
            )
    if args.json_file is not None:
        return _items_from_json(read_text(args.json_file))
    if args.eml is not None:
        data = sys.stdin.buffer.read() if args.eml == "-" else Path(args.eml).read_bytes()
        payload = payload_from_eml(data, args.id)
        extra = {
            "account_id": args.account,
            "priority": args.priority,
            "deferred_ts": args.deferred_ts,
        }
        return [{**payload, **{k: v for k, v in extra.items() if v is not None}}], None
    return [payload_from_flags(args)], None


def cmd_send(config: Config, args) -> int:
    """Queue messages from flags, a JSON file (--json FILE) or an .eml file (--eml FILE)."""
    try:
        items, default_priority = _items(args)
    except (PayloadError, OSError) as exc:
        raise CliError(str(exc)) from None
    if default_priority is not None:
        try:
            default_priority = parse_priority(default_priority)
        except ValueError:
            raise CliError("--json: default_priority must be 0-3 or a priority name") from None
    conn, queued, rejected = connect(config), [], []
    for start in range(0, len(items), MAX_BATCH):  # one short transaction per API-sized batch
        chunk = items[start : start + MAX_BATCH]
        result = intake.accept_batch(conn, config, chunk, time.time(), default_priority)
        queued += result.queued
        rejected += result.rejected
    lines = [f"queued {len(queued)}, rejected {len(rejected)}"]
    if rejected:
        lines.append(table(rejected, ["id", "reason"]))
    emit(args, {"ok": not rejected, "queued": queued, "rejected": rejected}, "\n".join(lines))
    return OK if not rejected else REFUSED


# -- messages -------------------------------------------------------------------------------
def cmd_messages_list(config: Config, args) -> int:
    """List stored messages, oldest first, one page at a time."""
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit must be between 1 and 1000")
    rows, next_cursor = store.list_messages(
        connect(config),
        time.time(),
        status=Status(args.status) if args.status else None,
        active_only=args.active_only,
        account_id=args.account,
        limit=args.limit,
        cursor=args.cursor,
    )
    shown = [
        {
            **r,
            "account": r["account_id"] or "default",
            "created": when(r["created_at"]),
            "subject": (r["message"].get("subject") or "")[:40],
            "error": (r["error"] or "")[:50] or None,
        }
        for r in rows
    ]
    columns = ["id", "status", "account", "priority", "attempts", "created", "subject", "error"]
    human = table(shown, columns) if rows else "no messages"
    if next_cursor is not None:
        human += f"\nmore: --cursor {next_cursor}"
    emit(args, {"ok": True, "messages": rows, "next_cursor": next_cursor}, human)
    return OK


def cmd_messages_show(config: Config, args) -> int:
    """Show one message, its status and every delivery attempt."""
    record = store.get_message(connect(config), args.id, time.time())
    if record is None:
        raise CliError(f"no message {args.id!r}", REFUSED)
    message = record["message"]
    head = {
        "id": record["id"],
        "status": record["status"],
        "account": record["account_id"] or "default",
        "priority": record["priority"],
        "from": message.get("from"),
        "to": message.get("to"),
        "subject": message.get("subject"),
        "created": when(record["created_at"]),
        "deferred until": when(record["deferred_ts"]),
        "sent": when(record["sent_ts"]),
        "failed": when(record["error_ts"]),
        "error": record["error"],
        "smtp code": record["smtp_code"],
        "refused": record["refused"],
        "reported": when(record["reported_ts"]),
        "attempts": record["attempts"],
        "possible duplicate": record["possible_duplicate"],
    }
    attempts = [{**a, "ts": when(a["ts"])} for a in record["attempt_log"]]
    human = pairs(head)
    if attempts:
        human += "\n\n" + table(attempts, ["ts", "outcome", "smtp_code", "detail", "process"])
    emit(args, {"ok": True, **record}, human)
    return OK


def cmd_messages_delete(config: Config, args) -> int:
    """Delete messages no dispatcher holds; exit 1 when any was missing or in flight."""
    out = store.delete_messages(connect(config), args.ids, time.time())
    lines = [f"removed {len(out['removed'])}"]
    lines += [f"not found: {i}" for i in out["not_found"]]
    lines += [f"in flight (retry later): {i}" for i in out["in_flight"]]
    data = {
        "ok": True,
        "removed": len(out["removed"]),
        "not_found": out["not_found"],
        "in_flight": out["in_flight"],
    }
    emit(args, data, "\n".join(lines))
    return OK if len(out["removed"]) == len(set(args.ids)) else REFUSED


# -- the scheduler ----------------------------------------------------------------------------
def cmd_status(config: Config, args) -> int:
    """Queue counts, the scheduler switch and every process's last heartbeat."""
    conn, now = connect(config), time.time()
    data = {
        "ok": True,
        "active": store.is_active(conn, config.active),
        "test_mode": config.test_mode,
        "counts": store.status_counts(conn, now),
        "pending_by_priority": store.pending_by_priority(conn),
        "oldest_ready_age_seconds": round(store.oldest_ready_age(conn, now), 3),
        "processes": store.heartbeats(conn, now),
    }
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
    emit(args, data, human)
    return OK


def cmd_run_now(config: Config, args) -> int:
    """Wake every dispatcher and the reporter now (in test_mode: allow one round)."""
    store.set_setting(connect(config), "run_now_at", repr(time.time()))
    woken = wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    woken += wakeup.notify(config.run_dir, wakeup.REPORTER)
    emit(args, {"ok": True, "woken": woken}, f"woke {woken} processes")
    return OK


def cmd_suspend(config: Config, args) -> int:
    """Stop claiming new messages (persisted); reporting continues."""
    store.set_active(connect(config), False)
    emit(args, {"ok": True, "active": False}, "suspended: dispatchers claim nothing new")
    return OK


def cmd_activate(config: Config, args) -> int:
    """Resume claiming messages (persisted) and wake the dispatchers."""
    store.set_active(connect(config), True)
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    emit(args, {"ok": True, "active": True}, "active: dispatchers claim again")
    return OK


def cmd_cleanup(config: Config, args) -> int:
    """Delete messages reported longer ago than --older-than (default: the retention)."""
    older = config.delivery_report_retention_seconds if args.older_than is None else args.older_than
    if older < 0:
        raise CliError("--older-than must not be negative")
    removed = store.purge_reported(connect(config), time.time() - older)
    emit(args, {"ok": True, "removed": removed}, f"removed {removed} reported messages")
    return OK
