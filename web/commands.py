"""The scheduler commands: cleanup, run-now, suspend, activate (``common.operations``)."""

from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify

from common import operations
from web.db import get_config, get_conn
from web.inputs import json_body

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


@blueprint.post("/run-now")
def run_now():
    """Record the request and wake every dispatcher and the reporter."""
    return jsonify(ok=True, woken=operations.run_now(get_conn(), get_config(), time.time()))


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
