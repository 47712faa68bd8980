"""The scheduler commands: cleanup, run-now, retry, suspend, activate (``common.operations``).

Retry acts in the caller's tenant; the others act on the caller's tenant, or, for the admin
naming no tenant, on the whole service (docs/tenants.md)."""

from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify

from common import operations
from web.caller import scope, tenant
from web.db import get_config, get_conn
from web.inputs import json_body

blueprint = Blueprint("commands", __name__, url_prefix="/commands")


@blueprint.post("/cleanup-messages")
def cleanup_messages():
    """Purge messages reported longer ago than older_than_seconds (default: the retention)."""
    older = json_body(optional=True).get("older_than_seconds")
    done = operations.cleanup(get_conn(), get_config(), time.time(), older, scope())
    answer = {"ok": True, "removed": done.removed}
    if done.note:
        answer["note"] = done.note
    return jsonify(answer)


def _field(body: dict, name: str, kind: type, what: str, default=None):
    """``body[name]`` when it is a ``kind`` (absent or null: ``default``), else a 400.

    Checked by hand like every body here: web.schemas describes them for the OpenAPI
    document, and workers never load it.
    """
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not kind:  # exact: JSON makes no subclasses, and true is no number
        abort(400, f"'{name}' must be {what}.")
    return value


@blueprint.post("/run-now")
def run_now():
    """Record the request and wake every dispatcher and the reporter; flush: retries first."""
    flush = _field(json_body(optional=True), "flush", bool, "true or false", False)
    done = operations.run_now(get_conn(), get_config(), time.time(), flush, scope())
    answer = {"ok": True, "woken": done.woken}
    if flush:
        answer["flushed"] = done.flushed
        answer["probing"] = done.probing
    return jsonify(answer)


@blueprint.post("/retry")
def retry():
    """Requeue errored messages and messages waiting for a retry, by ids, account or status."""
    body = json_body()
    ids = _field(body, "ids", list, "a list of message id strings")
    if ids is not None and not all(isinstance(i, str) for i in ids):
        abort(400, "'ids' must be a list of message id strings.")
    done = operations.retry(
        get_conn(),
        get_config(),
        tenant(),
        time.time(),
        ids=ids,
        account_id=_field(body, "account_id", str, "an account id string"),
        status=_field(body, "status", str, "'error' or 'deferred'"),
        reset_attempts=_field(body, "reset_attempts", bool, "true or false", False),
    )
    answer = {"ok": True, "requeued": done.requeued, "attempts": done.attempts}
    if ids is not None:
        answer |= {"not_found": done.not_found, "not_retryable": done.not_retryable}
    return jsonify(answer)


@blueprint.post("/suspend")
def suspend():
    """Stop claiming (persisted); reporting goes on."""
    operations.set_active(get_conn(), get_config(), False, scope())
    return jsonify(ok=True, active=False)


@blueprint.post("/activate")
def activate():
    """Resume claiming (persisted) and wake the dispatchers."""
    operations.set_active(get_conn(), get_config(), True, scope())
    return jsonify(ok=True, active=True)
