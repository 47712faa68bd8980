"""The caller's tenant's suppression list: list, add, remove (``common.operations``;
docs/bounces.md)."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request

from common import operations
from web.caller import tenant
from web.db import get_conn
from web.inputs import int_arg, json_body

blueprint = Blueprint("suppressions", __name__)

PAGE_SIZE = 100


@blueprint.get("/suppressions")
def suppressions():
    """A page of the suppression list in address order, with the next page's cursor."""
    limit = int_arg("limit", PAGE_SIZE, 1, operations.MAX_SUPPRESSIONS_PAGE)
    rows, cursor = operations.suppressions(
        get_conn(), tenant(), limit, request.args.get("cursor", "")
    )
    return jsonify(ok=True, suppressions=rows, next_cursor=cursor)


@blueprint.post("/suppressions")
def suppress():
    """Stop sending to an address: {"address", "reason"?: manual|complaint|hard_bounce}."""
    body = json_body()
    entry = operations.suppress(
        get_conn(), tenant(), body.get("address"), body.get("reason", "manual"), time.time()
    )
    return jsonify(ok=True, suppression=entry)


@blueprint.delete("/suppressions/<path:address>")
def unsuppress(address: str):
    """Send to an address again."""
    operations.unsuppress(get_conn(), tenant(), address)
    return jsonify(ok=True, removed=address.strip().lower())
