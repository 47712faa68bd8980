"""Tenants, the admin's alone: create, list, read, change, rotate a token, suspend, activate,
delete (``common.operations.tenants``; docs/tenants.md)."""

from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify
from pydantic import ValidationError

from common.models import explain
from common.operations import tenants as actions
from common.tenants import NewTenant, TenantSettings
from web.caller import admin_only
from web.db import get_config, get_conn
from web.inputs import flag, json_body

blueprint = Blueprint("tenants", __name__, url_prefix="/tenants")


def _valid(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        abort(400, "Invalid tenant: " + explain(exc) + ".")


@blueprint.post("")
@admin_only
def create():
    """Create a tenant; the answer carries its token, the only time it is shown."""
    new = _valid(NewTenant, json_body())
    tenant, token = actions.create(get_conn(), get_config(), new, time.time())
    return jsonify(ok=True, tenant=tenant, token=token), 201


@blueprint.get("")
@admin_only
def list_tenants():
    """Every tenant, the default one first."""
    return jsonify(ok=True, tenants=actions.list_all(get_conn(), get_config()))


@blueprint.get("/<tenant_id>")
@admin_only
def show(tenant_id: str):
    """One tenant (never its token or its report secrets)."""
    return jsonify(ok=True, tenant=actions.find(get_conn(), get_config(), tenant_id))


@blueprint.patch("/<tenant_id>")
@admin_only
def change(tenant_id: str):
    """Change a tenant's name, report upstream or limits (null clears an optional one)."""
    changes = _valid(TenantSettings, json_body())
    tenant = actions.update(get_conn(), get_config(), tenant_id, changes, time.time())
    return jsonify(ok=True, tenant=tenant)


@blueprint.post("/<tenant_id>/rotate-token")
@admin_only
def rotate_token(tenant_id: str):
    """A new token; the old one stops working at once."""
    tenant, token = actions.rotate_token(get_conn(), get_config(), tenant_id, time.time())
    return jsonify(ok=True, tenant=tenant, token=token)


def _switch(tenant_id: str, active: bool):
    tenant = actions.set_active(get_conn(), get_config(), tenant_id, active, time.time())
    return jsonify(ok=True, tenant=tenant)


@blueprint.post("/<tenant_id>/suspend")
@admin_only
def suspend(tenant_id: str):
    """Stop the tenant's mail (only its mail; its reports go on)."""
    return _switch(tenant_id, False)


@blueprint.post("/<tenant_id>/activate")
@admin_only
def activate(tenant_id: str):
    """Resume the tenant's mail."""
    return _switch(tenant_id, True)


@blueprint.delete("/<tenant_id>")
@admin_only
def delete(tenant_id: str):
    """Remove a tenant and all of its data; 409 while it owes mail or reports, unless
    ?purge=true."""
    done = actions.delete(get_conn(), get_config(), tenant_id, flag("purge"), time.time())
    return jsonify(ok=True, removed=tenant_id, purged_messages=done.purged,
                   in_flight=done.in_flight)  # fmt: skip
