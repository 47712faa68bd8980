"""Who the current request comes from, and the tenant it acts in (set by ``web.auth``)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import g

from common import store, tenants
from common.enums import DEFAULT_TENANT
from web.db import get_conn


@dataclass(frozen=True)
class Caller:
    """The admin or a tenant, and the tenant it acts in (None: the admin naming no tenant,
    so the service-wide routes act on the whole service)."""

    tenant: str | None
    admin: bool


ADMIN = Caller(None, True)


def admin_only(view):
    """Mark a route as the admin's alone: a tenant token gets 403 (``web.auth``)."""
    view.admin_only = True
    return view


def scope() -> str | None:
    """The tenant the request acts in, or None: the whole service (the admin naming none)."""
    return g.caller.tenant


def tenant() -> str:
    """The tenant whose accounts, messages and suppressions the request reads or changes."""
    return g.caller.tenant or DEFAULT_TENANT


def tenant_of(token: str) -> Caller | None:
    """The tenant a tenant token belongs to, looked up by its hash (None: no such token)."""
    digest = tenants.token_hash(token)
    row = store.tenants.by_token_hash(get_conn(), digest)
    if row is None or not tenants.hashes_match(digest, row["token_hash"]):
        return None
    return Caller(row["id"], False)
