"""Messages: enqueue (add-messages), delete, list and read, in the caller's tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, abort, jsonify, request, stream_with_context

from common import intake, store
from common.enums import Priority, Status
from common.models import MAX_BATCH
from web.caller import tenant
from web.db import get_config, get_conn
from web.errors import error_response
from web.inputs import flag, int_arg, json_body

blueprint = Blueprint("messages", __name__)
PAGE_SIZE = 100  # messages per GET /messages page unless ?limit says otherwise
MAX_PAGE = 1000  # most messages one GET /messages page may carry
MAX_CURSOR = 2**63 - 1  # cursors are SQLite rowids
# stored payload bytes one page with include=payload carries (it ends after the message that
# reaches it, so a single larger message still fits): bounds a page's size, not the memory
# it takes, since payloads are copied from the database to the client in pieces
PAGE_BYTES = 8 * 1024 * 1024
INCLUDE_VALUES = frozenset({"payload"})
STATUS_VALUES = frozenset(s.value for s in Status)
STATUS_NAMES = ", ".join(s.value for s in Status)


def _default_priority(body: dict) -> int | None:
    """The batch's default_priority, or a 400."""
    value = body.get("default_priority")
    if value is None:
        return None
    try:
        return int(Priority.parse(value))
    except ValueError:
        abort(400, "'default_priority' must be 0-3 or immediate/high/medium/low.")


@blueprint.post("/commands/add-messages")
def add_messages():
    """Validate each message on its own, store the valid ones, wake dispatchers."""
    body = json_body()
    items = body.get("messages")
    if not isinstance(items, list):
        abort(400, "'messages' must be a list of message objects.")
    if len(items) > MAX_BATCH:
        abort(
            400, f"At most {MAX_BATCH} messages per request ({len(items)} sent); split the batch."
        )
    default_priority = _default_priority(body)
    result = intake.accept_batch(
        get_conn(), get_config(), tenant(), items, time.time(), default_priority
    )
    if items and not result.queued:
        return error_response(
            400,
            "No message was queued; see 'rejected' for the reasons.",
            queued=0,
            rejected=result.rejected,
        )
    return jsonify(ok=True, queued=len(result.queued), rejected=result.rejected)


@blueprint.post("/commands/delete-messages")
def delete_messages():
    """Delete the listed messages that no dispatcher holds."""
    ids = json_body().get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        abort(400, "'ids' must be a list of message id strings.")
    out = store.messages.delete(get_conn(), tenant(), ids, time.time())
    return jsonify(
        ok=True, removed=len(out["removed"]), not_found=out["not_found"], in_flight=out["in_flight"]
    )


@blueprint.get("/messages")
def list_messages():
    """A page of messages in storage order, filtered, with the next page's cursor.

    Records leave out the message itself unless ``include=payload``; then the page also ends
    at ``PAGE_BYTES`` of payloads.
    """
    limit = int_arg("limit", PAGE_SIZE, 1, MAX_PAGE)
    cursor = int_arg("cursor", 0, 0, MAX_CURSOR)
    status_text = request.args.get("status") or None
    if status_text is not None and status_text not in STATUS_VALUES:
        abort(400, f"'status' must be one of {STATUS_NAMES}.")
    include = request.args.get("include") or None
    if include is not None and include not in INCLUDE_VALUES:
        abort(400, "'include' must be 'payload' (or left out).")
    conn = get_conn()
    rows, next_cursor = store.messages.list_page(
        conn,
        tenant(),
        time.time(),
        status=None if status_text is None else Status(status_text),
        active_only=flag("active_only"),
        account_id=request.args.get("account_id") or None,
        limit=limit,
        cursor=cursor,
        payloads=False,
        byte_budget=PAGE_BYTES if include else None,
    )
    if not include:
        return jsonify(ok=True, messages=rows, next_cursor=next_cursor)
    page = _page_with_payloads(conn, tenant(), rows, next_cursor)
    return Response(stream_with_context(page), mimetype="application/json")


def _page_with_payloads(
    conn, owner: str, rows: list[dict], next_cursor: int | None
) -> Iterator[bytes]:
    """The page as JSON text, each stored payload copied through in pieces, never parsed."""
    yield b'{"ok":true,"messages":['
    separator = b""
    for row in rows:
        pieces = store.messages.payload_pieces(conn, owner, row["id"])
        if pieces is None:  # deleted since the page was read
            continue
        yield separator + json.dumps(row)[:-1].encode() + b',"message":'
        yield from pieces
        yield b"}"
        separator = b","
    yield b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"


@blueprint.get("/messages/<path:message_id>")
def get_message(message_id: str):
    """One message: the record, its attempt log and its status."""
    record = store.messages.get(get_conn(), tenant(), message_id, time.time())
    if record is None:
        abort(404, f"No message {message_id!r}; it was never queued or has been purged.")
    return jsonify(ok=True, **record)
