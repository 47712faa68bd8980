"""Operator actions on tenants, written once for the API's /tenants routes and ``asyncmail
tenants`` (docs/tenants.md).  Only the admin reaches them.

A tenant's token is made here and returned once, by ``create`` and ``rotate_token``; the
store keeps its hash.  Report secrets are sealed with ASYNCMAIL_SECRET_KEY like SMTP
passwords.  Answers never hold a token or a secret: ``has_*`` and ``signed`` say which are
set.  The default tenant always exists; its report upstream is the [client] section.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from common import crypto, store, tenants, wakeup
from common.config import Config
from common.enums import DEFAULT_TENANT
from common.logs import fields, redact_url
from common.operations import Refusal, Refused

logger = logging.getLogger(__name__)

REPORT_FIELDS = ("client_sync_url", "client_sync_user", *store.tenants.SECRETS, "report_format")


def _missing(tenant_id: str) -> Refused:
    return Refused(
        f"No tenant {tenant_id!r}; GET /tenants (asyncmail tenants list) lists them.",
        Refusal.NOT_FOUND,
    )


def view(row: dict, config: Config) -> dict:
    """A tenant as answers show it (the default tenant with its [client] upstream)."""
    if row["id"] == DEFAULT_TENANT:
        row = {
            **row,
            "client_sync_url": config.client_sync_url,
            "client_sync_user": config.client_sync_user,
            "report_format": config.report_format,
            "has_token": bool(config.client_sync_token),
            "has_password": bool(config.client_sync_password),
            "signed": bool(config.client_sync_signing_key),
        }
    url = row["client_sync_url"]
    return {
        **row,
        "client_sync_url": url and redact_url(url),
        "default": row["id"] == DEFAULT_TENANT,
    }


def find(conn, config: Config, tenant_id: str) -> dict:
    """One tenant's view, or Refused (NOT_FOUND)."""
    row = store.tenants.get(conn, tenant_id)
    if row is None:
        raise _missing(tenant_id)
    return view(row, config)


def list_all(conn, config: Config) -> list[dict]:
    """Every tenant, the default one first."""
    return [view(row, config) for row in store.tenants.list_all(conn)]


def _sealed(settings: dict, config: Config) -> dict:
    """The settings as stored: report secrets sealed."""
    return {
        name: crypto.seal(value, config.secret_key) if name in store.tenants.SECRETS else value
        for name, value in settings.items()
    }


def create(conn, config: Config, new: tenants.NewTenant, now: float) -> tuple[dict, str]:
    """Create a tenant; (its view, its token: the only time the token is seen)."""
    token = tenants.new_token()
    settings = _sealed(new.model_dump(exclude={"id"}, exclude_unset=True), config)
    why_not = store.tenants.create(conn, new.id, settings, tenants.token_hash(token), now)
    if why_not == "exists":
        raise Refused(f"Tenant {new.id!r} exists already; PATCH it to change it.", Refusal.CONFLICT)
    if why_not == "removing":
        raise Refused(
            f"Tenant {new.id!r} is being removed (a dispatcher still holds some of its "
            "messages); retry in a minute.",
            Refusal.CONFLICT,
        )
    logger.info(fields(event="tenant_created", tenant=new.id))
    wakeup.notify(config.run_dir, wakeup.REPORTER)  # a new report stream
    return find(conn, config, new.id), token


def update(conn, config: Config, tenant_id: str, changes: tenants.TenantSettings, now: float):
    """Change a tenant's name, report upstream or limits; its view."""
    wanted = changes.model_dump(exclude_unset=True)
    if tenant_id == DEFAULT_TENANT and set(wanted) & set(REPORT_FIELDS):
        raise Refused(
            "The default tenant reports to the [client] section of the configuration; "
            "change it there.",
            Refusal.INVALID,
        )
    if not store.tenants.update(conn, tenant_id, _sealed(wanted, config), now):
        raise _missing(tenant_id)
    logger.info(fields(event="tenant_changed", tenant=tenant_id, fields=",".join(sorted(wanted))))
    wakeup.notify(config.run_dir, wakeup.REPORTER)
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return find(conn, config, tenant_id)


def rotate_token(conn, config: Config, tenant_id: str, now: float) -> tuple[dict, str]:
    """A new token for the tenant: the old one stops working at once; (view, new token)."""
    if tenant_id == DEFAULT_TENANT:
        raise Refused(
            "The default tenant has no token of its own: the admin token ([server] api_token) "
            "acts in it.",
            Refusal.INVALID,
        )
    token = tenants.new_token()
    if not store.tenants.set_token_hash(conn, tenant_id, tenants.token_hash(token), now):
        raise _missing(tenant_id)
    logger.info(fields(event="tenant_token_rotated", tenant=tenant_id))
    return find(conn, config, tenant_id), token


def set_active(conn, config: Config, tenant_id: str, active: bool, now: float) -> dict:
    """Suspend or resume the tenant's mail (the operator's switch; only its mail stops)."""
    if not store.tenants.set_switch(conn, tenant_id, "active", active, now):
        raise _missing(tenant_id)
    logger.info(
        fields(event="tenant_activated" if active else "tenant_suspended", tenant=tenant_id)
    )
    if active:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return find(conn, config, tenant_id)


@dataclass(frozen=True)
class Removed:
    purged: int  # messages removed with it
    in_flight: list[str]  # held by a dispatcher: removed once their attempt ends


def delete(conn, config: Config, tenant_id: str, purge: bool, now: float) -> Removed:
    """Remove a tenant with its accounts, messages and suppressions; refused while it has
    unsent messages or unreported outcomes, unless ``purge``."""
    if tenant_id == DEFAULT_TENANT:
        raise Refused("The default tenant cannot be deleted.", Refusal.INVALID)
    done = store.tenants.delete(conn, tenant_id, purge, now)
    if not done.found:
        raise _missing(tenant_id)
    if not done.deleted:
        raise Refused(
            f"Tenant {tenant_id!r} has {done.unsent} unsent messages and {done.unreported} "
            "outcomes not yet reported; wait for them, or remove them with it "
            "(?purge=true, or asyncmail tenants delete --purge).",
            Refusal.CONFLICT,
        )
    logger.info(fields(event="tenant_deleted", tenant=tenant_id, purged=done.purged,
                       in_flight=len(done.in_flight)))  # fmt: skip
    wakeup.notify(config.run_dir, wakeup.REPORTER)  # its report stream ends
    return Removed(done.purged, done.in_flight)
