"""``asyncmail send`` and ``asyncmail messages list|show|delete``.

Enqueueing goes through ``common.intake.accept_batch`` exactly like the API's add-messages,
so both reject the same things with the same reasons.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cli.eml import PayloadError, payload_from_eml, payload_from_flags, read_text
from cli.output import OK, REFUSED, CliError, emit, pairs, table, when
from cli.tenants import tenant
from common import intake, store
from common.config import Config
from common.enums import Priority, Status
from common.models import MAX_BATCH

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
            default_priority = int(Priority.parse(default_priority))
        except ValueError:
            raise CliError("--json: default_priority must be 0-3 or a priority name") from None
    conn, queued, rejected = store.db.open_database(config), [], []
    owner = tenant(conn, args)
    for start in range(0, len(items), MAX_BATCH):  # one short transaction per API-sized batch
        chunk = items[start : start + MAX_BATCH]
        result = intake.accept_batch(conn, config, owner, chunk, time.time(), default_priority)
        queued += result.queued
        rejected += result.rejected
    lines = [f"queued {len(queued)}, rejected {len(rejected)}"]
    if rejected:
        lines.append(table(rejected, ["id", "reason"]))
    emit(args, {"ok": not rejected, "queued": queued, "rejected": rejected}, "\n".join(lines))
    return OK if not rejected else REFUSED


def cmd_messages_list(config: Config, args) -> int:
    """List stored messages, oldest first, one page at a time."""
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit must be between 1 and 1000")
    conn = store.db.open_database(config)
    rows, next_cursor = store.messages.list_page(
        conn,
        tenant(conn, args),
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
    """Show one message, its status, every delivery attempt and the bounces it met."""
    conn = store.db.open_database(config)
    record = store.messages.get(conn, tenant(conn, args), args.id, time.time())
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
        "message-id": record["message_id_header"],
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
    bounces = [{**b, "bounced": when(b["bounced_ts"])} for b in record["bounces"]]
    if bounces:
        columns = ["bounced", "recipient", "kind", "action", "status", "diagnostic"]
        human += "\n\nbounces:\n" + table(bounces, columns)
    emit(args, {"ok": True, **record}, human)
    return OK


def cmd_messages_delete(config: Config, args) -> int:
    """Delete messages no dispatcher holds; exit 1 when any was missing or in flight."""
    conn = store.db.open_database(config)
    out = store.messages.delete(conn, tenant(conn, args), args.ids, time.time())
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
