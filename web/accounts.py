"""SMTP accounts of the caller's tenant: create or replace, list, delete, usage
(``common.operations``)."""

from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify
from pydantic import ValidationError

from common import operations, store
from common.models import Account, explain
from web.caller import tenant
from web.db import get_config, get_conn
from web.inputs import flag, json_body

blueprint = Blueprint("accounts", __name__)


@blueprint.post("/account")
def add_account():
    """Create or replace an SMTP account; the answer never holds the password."""
    try:
        account = Account.model_validate(json_body())
    except ValidationError as exc:
        abort(400, "Invalid account: " + explain(exc) + ".")
    saved = operations.save_account(get_conn(), get_config(), tenant(), account, time.time())
    return jsonify(ok=True, account=saved)


@blueprint.get("/accounts")
def accounts():
    """Every account, without passwords."""
    return jsonify(ok=True, accounts=store.accounts.list_all(get_conn(), tenant()))


@blueprint.delete("/account/<path:account_id>")
def delete_account(account_id: str):
    """Delete an account; 409 while it has unsent messages unless ?purge=true."""
    done = operations.delete_account(get_conn(), tenant(), account_id, flag("purge"), time.time())
    return jsonify(ok=True, removed=account_id, purged_messages=done.purged,
                   in_flight=done.in_flight, awaiting_report=done.awaiting_report)  # fmt: skip


@blueprint.get("/accounts/<path:account_id>/usage")
def usage(account_id: str):
    """Sends in each rate-limit window against the account's limit."""
    found = operations.usage(get_conn(), get_config(), tenant(), account_id, time.time())
    return jsonify(ok=True, **found)
