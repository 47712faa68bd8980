"""The endpoints of SPEC §5; each answers JSON with ``ok`` (and ``error`` on failure)."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, abort, jsonify, request
from pydantic import ValidationError

from common import crypto, db, intake, metrics, store, wakeup
from common.models import MAX_BATCH, Account, explain, parse_priority
from common.status import Status
from web.app import app_config, conn, flag
from web.openapi import OPENAPI

blueprint = Blueprint("api", __name__)
MAX_PAGE = 1000  # most messages one GET /messages page may carry
STATUS_VALUES = frozenset(s.value for s in Status)
STATUS_NAMES = ", ".join(s.value for s in Status)


def _body(optional: bool = False) -> dict:
    """The request's JSON object, or a 400 that says what is wrong."""
    raw = request.get_data(cache=False)
    if len(raw) > app_config().max_request_bytes:
        abort(413)
    if not raw.strip():
        if optional:
            return {}
        abort(400, "The request body is empty; send a JSON object.")
    try:
        data = json.loads(raw)
    except RecursionError:
        abort(400, "The request body is not valid JSON (nested too deeply).")
    except ValueError as exc:
        abort(400, f"The request body is not valid JSON ({exc}).")
    if not isinstance(data, dict):
        abort(400, "The request body must be a JSON object.")
    return data


@blueprint.get("/health")
def health():
    """200 while the database answers, 503 otherwise; needs no token."""
    try:
        db.ping(conn())
    except Exception as exc:  # any database failure means unhealthy
        return jsonify(ok=False, status="unavailable", error=f"Database unavailable: {exc}"), 503
    return jsonify(ok=True, status="ok")


@blueprint.get("/status")
def status():
    """Scheduler switch, counts by status and priority, process heartbeats."""
    config, database, now = app_config(), conn(), time.time()
    return jsonify(
        ok=True,
        active=store.is_active(database, config.active),
        test_mode=config.test_mode,
        counts=store.status_counts(database, now),
        pending_by_priority=store.pending_by_priority(database),
        oldest_ready_age_seconds=round(store.oldest_ready_age(database, now), 3),
        processes=store.heartbeats(database, now),
    )


def _default_priority(body: dict) -> int | None:
    """The batch's default_priority, or a 400."""
    value = body.get("default_priority")
    if value is None:
        return None
    try:
        return parse_priority(value)
    except ValueError:
        abort(400, "'default_priority' must be 0-3 or immediate/high/medium/low.")


@blueprint.post("/commands/add-messages")
def add_messages():
    """Validate each message on its own, store the valid ones, wake dispatchers."""
    body = _body()
    items = body.get("messages")
    if not isinstance(items, list):
        abort(400, "'messages' must be a list of message objects.")
    if len(items) > MAX_BATCH:
        abort(
            400, f"At most {MAX_BATCH} messages per request ({len(items)} sent); split the batch."
        )
    default_priority = _default_priority(body)
    result = intake.accept_batch(conn(), app_config(), items, time.time(), default_priority)
    if items and not result.queued:
        return jsonify(
            ok=False,
            error="No message was queued; see 'rejected' for the reasons.",
            queued=0,
            rejected=result.rejected,
        ), 400
    return jsonify(ok=True, queued=len(result.queued), rejected=result.rejected)


@blueprint.post("/commands/delete-messages")
def delete_messages():
    """Delete the listed messages that no dispatcher holds."""
    ids = _body().get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        abort(400, "'ids' must be a list of message id strings.")
    out = store.delete_messages(conn(), ids, time.time())
    return jsonify(
        ok=True, removed=len(out["removed"]), not_found=out["not_found"], in_flight=out["in_flight"]
    )


@blueprint.post("/commands/cleanup-messages")
def cleanup_messages():
    """Purge messages reported longer ago than older_than_seconds."""
    body = _body(optional=True)
    older = body.get("older_than_seconds")
    if older is None:
        older = app_config().delivery_report_retention_seconds
    if isinstance(older, bool) or not isinstance(older, int) or older < 0:
        abort(400, "'older_than_seconds' must be a non-negative integer.")
    removed = store.purge_reported(conn(), time.time() - older)
    return jsonify(ok=True, removed=removed)


@blueprint.post("/commands/run-now")
def run_now():
    """Record the request and wake every dispatcher and the reporter."""
    config = app_config()
    store.set_setting(conn(), "run_now_at", repr(time.time()))
    woken = wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    woken += wakeup.notify(config.run_dir, wakeup.REPORTER)
    return jsonify(ok=True, woken=woken)


@blueprint.post("/commands/suspend")
def suspend():
    """Stop claiming (persisted); reporting goes on."""
    store.set_active(conn(), False)
    return jsonify(ok=True, active=False)


@blueprint.post("/commands/activate")
def activate():
    """Resume claiming (persisted) and wake the dispatchers."""
    store.set_active(conn(), True)
    wakeup.notify(app_config().run_dir, wakeup.DISPATCHER)
    return jsonify(ok=True, active=True)


@blueprint.post("/account")
def add_account():
    """Create or replace an SMTP account; the answer never holds the password."""
    try:
        account = Account.model_validate(_body())
    except ValidationError as exc:
        abort(400, "Invalid account: " + explain(exc) + ".")
    row = account.model_dump()
    row["password"] = crypto.seal(account.password, app_config().secret_key)
    database = conn()
    store.upsert_account(database, row, int(time.time()))
    wakeup.notify(app_config().run_dir, wakeup.DISPATCHER)
    return jsonify(ok=True, account=store.get_account(database, account.id))


@blueprint.get("/accounts")
def accounts():
    """Every account, without passwords."""
    return jsonify(ok=True, accounts=store.list_accounts(conn()))


@blueprint.delete("/account/<path:account_id>")
def delete_account(account_id: str):
    """Delete an account; 409 while it has unsent messages unless ?purge=true."""
    deleted, unsent = store.delete_account(conn(), account_id, flag("purge"))
    if deleted:
        return jsonify(ok=True, removed=account_id, purged_messages=unsent)
    if unsent:
        abort(
            409,
            f"Account {account_id!r} has {unsent} unsent messages; delete them "
            "first or pass ?purge=true to delete them with the account.",
        )
    abort(404, f"No account {account_id!r}; GET /accounts lists the known ones.")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query argument within [low, high], or a 400 naming it."""
    text = request.args.get(name)
    try:
        value = default if text is None else int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        abort(400, f"'{name}' must be an integer between {low} and {high}.")
    return value


@blueprint.get("/messages")
def list_messages():
    """A page of messages in storage order, filtered, with the next page's cursor."""
    limit = _int_arg("limit", 100, 1, MAX_PAGE)
    cursor = _int_arg("cursor", 0, 0, 2**63 - 1)
    status_text = request.args.get("status") or None
    if status_text is not None and status_text not in STATUS_VALUES:
        abort(400, f"'status' must be one of {STATUS_NAMES}.")
    rows, next_cursor = store.list_messages(
        conn(),
        time.time(),
        status=None if status_text is None else Status(status_text),
        active_only=flag("active_only"),
        account_id=request.args.get("account_id") or None,
        limit=limit,
        cursor=cursor,
    )
    return jsonify(ok=True, messages=rows, next_cursor=next_cursor)


@blueprint.get("/messages/<path:message_id>")
def get_message(message_id: str):
    """One message: the record, its attempt log and its status."""
    record = store.get_message(conn(), message_id, time.time())
    if record is None:
        abort(404, f"No message {message_id!r}; it was never queued or has been purged.")
    return jsonify(ok=True, **record)


@blueprint.get("/metrics")
def scrape():
    """Prometheus text: every process's counters plus database gauges."""
    body = metrics.render(conn)
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


@blueprint.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document of this API."""
    return jsonify(OPENAPI)
