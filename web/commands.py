"""The scheduler commands: cleanup, run-now, retry, suspend, activate (``common.operations``)."""

from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify
from pydantic import BaseModel, ValidationError

from common import operations
from common.models import explain
from web.db import get_config, get_conn
from web.inputs import json_body
from web.schemas import RetryRequest, RunNowRequest

REFUSAL_STATUS = {operations.Refusal.NOT_FOUND: 404, operations.Refusal.CONFLICT: 409}

blueprint = Blueprint("commands", __name__, url_prefix="/commands")


@blueprint.post("/cleanup-messages")
def cleanup_messages():
    """Purge messages reported longer ago than older_than_seconds (default: the retention)."""
    older = json_body(optional=True).get("older_than_seconds")
    try:
        done = operations.cleanup(get_conn(), get_config(), time.time(), older)
    except operations.Refused as exc:
        abort(400, f"{exc}.")
    answer = {"ok": True, "removed": done.removed}
    if done.note:
        answer["note"] = done.note
    return jsonify(answer)


def _validated(model: type[BaseModel], body: dict) -> BaseModel:
    """The body as ``model``, or a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        abort(400, f"Invalid request: {explain(exc)}.")


@blueprint.post("/run-now")
def run_now():
    """Record the request and wake every dispatcher and the reporter; flush: retries first."""
    flush = _validated(RunNowRequest, json_body(optional=True)).flush
    done = operations.run_now(get_conn(), get_config(), time.time(), flush)
    answer = {"ok": True, "woken": done.woken}
    if flush:
        answer["flushed"] = done.flushed
    return jsonify(answer)


@blueprint.post("/retry")
def retry():
    """Requeue errored messages and messages waiting for a retry, by ids, account or status."""
    asked = _validated(RetryRequest, json_body())
    try:
        done = operations.retry(
            get_conn(),
            get_config(),
            time.time(),
            ids=asked.ids,
            account_id=asked.account_id,
            status=asked.status,
            reset_attempts=asked.reset_attempts,
        )
    except operations.Refused as exc:
        abort(REFUSAL_STATUS.get(exc.kind, 400), f"{exc}.")
    answer = {"ok": True, "requeued": done.requeued, "attempts": done.attempts}
    if asked.ids is not None:
        answer |= {"not_found": done.not_found, "not_retryable": done.not_retryable}
    return jsonify(answer)


@blueprint.post("/suspend")
def suspend():
    """Stop claiming (persisted); reporting goes on."""
    operations.set_active(get_conn(), get_config(), False)
    return jsonify(ok=True, active=False)


@blueprint.post("/activate")
def activate():
    """Resume claiming (persisted) and wake the dispatchers."""
    operations.set_active(get_conn(), get_config(), True)
    return jsonify(ok=True, active=True)
