"""``asyncmail tenants add|list|show|rotate-token|suspend|activate|delete``, and the tenant the
other commands act in (``--tenant``), straight in the database (docs/tenants.md).

A command on accounts, messages or suppressions acts in ``--tenant`` (default: the default
tenant); status, run-now, suspend, activate and cleanup act on the whole service unless
``--tenant`` names one.  Report secrets come from environment variables, never from flags
(a flag's value is visible to every user of the host in the process list).
"""

from __future__ import annotations

import os
import time

from pydantic import ValidationError

from cli.output import OK, REFUSED, USAGE, CliError, emit, pairs, table, when
from common import operations, store
from common.config import Config
from common.enums import DEFAULT_TENANT
from common.models import explain
from common.operations import tenants as actions
from common.tenants import NewTenant

SECRET_FLAGS = {  # tenant field -> the option naming the variable that holds it
    "client_sync_password": "report_password_env",
    "client_sync_token": "report_token_env",
    "client_sync_signing_key": "signing_key_env",
}
PLAIN_FLAGS = {
    "client_sync_url": "report_url",
    "client_sync_user": "report_user",
    "report_format": "report_format",
    "limit_per_minute": "limit_per_minute",
    "limit_per_hour": "limit_per_hour",
    "limit_per_day": "limit_per_day",
    "limit_behavior": "limit_behavior",
}
COLUMNS = ["id", "name", "state", "reports to", "limits"]


def tenant(conn, args) -> str:
    """The tenant a command on accounts, messages or suppressions acts in."""
    return scope(conn, args) or DEFAULT_TENANT


def scope(conn, args) -> str | None:
    """``--tenant`` when given (it must exist), else None: the whole service."""
    named = getattr(args, "tenant", None)
    if named is not None and not store.tenants.exists(conn, named):
        raise CliError(f"no tenant {named!r} (asyncmail tenants list)", REFUSED)
    return named


def _refused(exc: operations.Refused) -> CliError:
    code = REFUSED if exc.kind is not operations.Refusal.INVALID else USAGE
    text = str(exc).replace("GET /tenants (asyncmail tenants list)", "asyncmail tenants list")
    return CliError(text.replace("(?purge=true, or asyncmail tenants delete --purge)", "(--purge)"),
                    code)  # fmt: skip


def _secret(variable: str) -> str:
    value = os.environ.get(variable)
    if value is None:
        raise CliError(f"the variable {variable} is not set")
    return value


def cmd_tenants_add(config: Config, args) -> int:
    """Create a tenant and print its API token (shown this once only)."""
    fields = {"id": args.id, "name": args.name or args.id}
    fields |= {name: getattr(args, flag) for name, flag in PLAIN_FLAGS.items()
               if getattr(args, flag) is not None}  # fmt: skip
    fields |= {name: _secret(getattr(args, flag)) for name, flag in SECRET_FLAGS.items()
               if getattr(args, flag)}  # fmt: skip
    try:
        new = NewTenant.model_validate(fields)
    except ValidationError as exc:
        raise CliError("invalid tenant: " + explain(exc)) from None
    conn = store.db.open_database(config)
    try:
        made, token = actions.create(conn, config, new, time.time())
    except operations.Refused as exc:
        raise _refused(exc) from None
    human = f"created tenant {new.id}; its API token (shown this once, keep it):\n{token}"
    emit(args, {"ok": True, "tenant": made, "token": token}, human)
    return OK


def _row(tenant: dict) -> dict:
    limits = [f"{tenant[f'limit_per_{u}']}/{u}" for u in ("minute", "hour", "day")
              if tenant[f"limit_per_{u}"]]  # fmt: skip
    state = "active" if tenant["active"] else "SUSPENDED"
    if not tenant["dispatching"]:
        state += " (paused by itself)"
    return {**tenant, "state": state, "reports to": tenant["client_sync_url"] or "-",
            "limits": " ".join(limits) or "none"}  # fmt: skip


def cmd_tenants_list(config: Config, args) -> int:
    """List tenants (never their tokens or report secrets)."""
    found = actions.list_all(store.db.open_database(config), config)
    emit(args, {"ok": True, "tenants": found}, table([_row(t) for t in found], COLUMNS))
    return OK


def _show(args, tenant: dict, token: str | None = None) -> None:
    shown = {**_row(tenant), "created_at": when(tenant["created_at"]),
             "updated_at": when(tenant["updated_at"])}  # fmt: skip
    human = pairs({k: v for k, v in shown.items() if k not in {"state", "reports to"}})
    data = {"ok": True, "tenant": tenant}
    if token is not None:
        data["token"] = token
        human += (
            f"\n\nnew API token (shown this once, keep it; the old one no longer works):\n{token}"
        )
    emit(args, data, human)


def cmd_tenants_show(config: Config, args) -> int:
    """Show one tenant (never its token or report secrets)."""
    try:
        _show(args, actions.find(store.db.open_database(config), config, args.id))
    except operations.Refused as exc:
        raise _refused(exc) from None
    return OK


def cmd_tenants_rotate_token(config: Config, args) -> int:
    """Give a tenant a new API token; the old one stops working at once."""
    conn = store.db.open_database(config)
    try:
        _show(args, *actions.rotate_token(conn, config, args.id, time.time()))
    except operations.Refused as exc:
        raise _refused(exc) from None
    return OK


def _switch(config: Config, args, active: bool) -> int:
    conn = store.db.open_database(config)
    try:
        _show(args, actions.set_active(conn, config, args.id, active, time.time()))
    except operations.Refused as exc:
        raise _refused(exc) from None
    return OK


def cmd_tenants_suspend(config: Config, args) -> int:
    """Stop a tenant's mail (only its mail; its reports go on)."""
    return _switch(config, args, False)


def cmd_tenants_activate(config: Config, args) -> int:
    """Resume a tenant's mail."""
    return _switch(config, args, True)


def cmd_tenants_delete(config: Config, args) -> int:
    """Delete a tenant and all its data; refused while it owes mail or reports unless --purge."""
    conn = store.db.open_database(config)
    try:
        done = actions.delete(conn, config, args.id, args.purge, time.time())
    except operations.Refused as exc:
        raise _refused(exc) from None
    human = f"deleted tenant {args.id} ({done.purged} messages removed)"
    if done.in_flight:
        human += f"; {len(done.in_flight)} being sent right now go once their attempt ends"
    emit(args, {"ok": True, "removed": args.id, "purged_messages": done.purged,
                "in_flight": done.in_flight}, human)  # fmt: skip
    return OK
