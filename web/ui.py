"""The status page at /ui: server-rendered HTML that refreshes itself, for people on call.

No script and no front-end build: Jinja templates (``web/templates/ui``) and inline SVG
charts (``web.charts``).  Access: with an api_token, the login form trades it (or a tenant's
token) for a session cookie (``web.session``); without one, loopback clients only, as for
the API.  A tenant sees its own accounts, messages and bounces only; the admin sees the
whole service and may pick one tenant (``?tenant=``).  Nothing secret is shown: accounts
come without passwords, and no configuration value is printed.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, abort, g, redirect, render_template, request

from common import operations, replication, store, tenants
from common.enums import DEFAULT_TENANT, Status
from common.logs import fields
from common.store.attempts import FAILED_OUTCOMES
from web import charts, session
from web.caller import ADMIN, tenant_of
from web.db import get_config, get_conn

logger = logging.getLogger(__name__)
blueprint = Blueprint("ui", __name__, url_prefix=session.PREFIX, template_folder="templates")

REFRESH_SECONDS = 10  # the page reloads itself this often
HOUR = 3600.0  # the charts and the failure list cover the last hour
FAILING_WINDOW = 900.0  # an account whose latest send in this window failed is failing
OLDEST_READY_ALERT = 60.0  # seconds a ready message may wait before the page flags it
FAILURES_SHOWN = 20
DAY = 86400.0  # the bounce panel covers the last day: notifications come in over hours
BOUNCES_SHOWN = 10
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@blueprint.after_request
def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@blueprint.app_template_global("account_name")
def account_name(tenant: str, account_id: str | None) -> str:
    """An account as the page names it: its id, after its tenant's unless that is the default."""
    name = "(default [smtp])" if account_id is None else account_id
    return name if tenant == DEFAULT_TENANT else f"{tenant}/{name}"


@blueprint.app_template_filter("clock")
def clock(ts: float | None) -> str:
    """Epoch seconds as the server's local date and time."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _page(template: str, status: int = 200, **context) -> tuple[str, int]:
    return render_template(template, refresh=REFRESH_SECONDS, **context), status


@blueprint.get("")
def index():
    """The status page: the caller's tenant, or for the admin the one picked (or all)."""
    config, conn, caller = get_config(), get_conn(), g.caller
    picked = caller.tenant or request.args.get("tenant") or None
    if picked is not None and not store.tenants.exists(conn, picked):
        abort(404, f"No tenant {picked!r}.")
    view = overview(conn, config, time.time(), picked)
    choices = [t["id"] for t in store.tenants.list_all(conn)] if caller.admin else []
    return _page("ui/index.html", **view, logout=bool(config.api_token), tenant=picked,
                 tenant_choices=choices)  # fmt: skip


@blueprint.get("/login")
def login_form():
    """The login form (without an api_token there is nothing to log in to)."""
    if not get_config().api_token:
        return redirect(session.PREFIX, 303)
    return _page("ui/login.html")


@blueprint.post("/login")
def login():
    """Check the token from the form; a session cookie and the page, or the form again."""
    if not session.same_origin():
        return _page("ui/login.html", 403, error="Refused: the form was not sent from this site.")
    expected = get_config().api_token
    if not expected:
        return redirect(session.PREFIX, 303)
    presented = request.form.get("token", "")
    caller = ADMIN if session.token_matches(presented, expected) else None
    if caller is None and tenants.is_tenant_token(presented):
        caller = tenant_of(presented)
    if caller is None:
        logger.warning(fields(event="ui_login", result="wrong_token", client=request.remote_addr))
        return _page(
            "ui/login.html", 401, error="Wrong token: use the [server] api_token or your tenant's."
        )
    response = redirect(session.PREFIX, 303)
    session.open_session(response, get_conn(), caller, time.time())
    logger.info(fields(event="ui_login", result="ok", tenant=caller.tenant or "(admin)",
                       client=request.remote_addr))  # fmt: skip
    return response


@blueprint.post("/logout")
def logout():
    """End the session (the cookie is removed) and show the login form."""
    if not session.same_origin():
        return _page("ui/login.html", 403, error="Refused: the form was not sent from this site.")
    response = redirect(session.LOGIN, 303)
    session.close_session(response)
    return response


# -- what the page shows -----------------------------------------------------------------------
def overview(conn, config, now: float, tenant: str | None = None) -> dict:
    """Everything the page shows, of one tenant or (None) of the whole service."""
    queue = store.messages.counts_by_status_and_priority(conn, now, tenant)
    processes = operations.heartbeats(conn, now)
    accounts = _accounts(conn, config, now, tenant)
    keys = [(a["tenant_id"], a["id"]) for a in accounts]
    minutes = store.attempts.per_minute(conn, keys, now - HOUR, now)
    sent, failed = _series(minutes)
    for account in accounts:
        hour = minutes[(account["tenant_id"], account["id"])].values()
        account["sent_hour"] = sum(b.get("sent", 0) for b in hour)
        account["failed_hour"] = sum(b.get(o, 0) for b in hour for o in FAILED_OUTCOMES)
    view = {
        "now": now,
        "active": _sending(conn, config, tenant),
        "test_mode": config.test_mode,
        "queue": queue,
        "totals": {status: sum(row.values()) for status, row in queue.items()},
        "oldest_ready": store.messages.oldest_ready_age(conn, now, tenant),
        "processes": processes,
        "accounts": accounts,
        "sent_chart": charts.bars(sent, "#2e7d32", "messages sent per minute", _tips(now, "sent")),
        "failed_chart": charts.bars(
            failed, "#c62828", "failed attempts per minute", _tips(now, "failed")
        ),
        "sent_total": sum(sent),
        "failed_total": sum(failed),
        "failures": store.attempts.recent_failures(conn, keys, now - HOUR, FAILURES_SHOWN),
        "replication": replication.state(config, now) if tenant is None else None,
        "lag_limit": operations.REPLICATION_LAG_LIMIT,
        "bounces": _bounces(conn, config, now, tenant),
    }
    # the page cannot see supervisord: a live heartbeat says the stack runs
    runs = any(not p["stale"] for p in processes)
    problems = operations.health(processes, runs, config.bounces_enabled)
    if view["replication"] is not None:
        problems += operations.replication_problems(view["replication"], runs)
    view["alerts"] = _alerts(view, problems)
    return view


def _sending(conn, config, tenant: str | None) -> bool:
    """Dispatching is on (for the tenant: and neither it nor the operator suspended it)."""
    active = store.settings.is_active(conn, config.active)
    if tenant is None:
        return active
    row = store.tenants.get(conn, tenant)
    return active and row["active"] and row["dispatching"]


def _accounts(conn, config, now: float, tenant: str | None) -> list[dict]:
    """Stored accounts (no password) and the [smtp] one, with usage and failing flag."""
    names = [tenant] if tenant else [t["id"] for t in store.tenants.list_all(conn)]
    rows = [{**a, "tenant_id": t} for t in names for a in store.accounts.list_all(conn, t)]
    if config.has_default_account and DEFAULT_TENANT in names:
        rows.append({"tenant_id": DEFAULT_TENANT, "id": None, "host": config.smtp_host,
                     "port": config.smtp_port})  # fmt: skip
    for row in rows:
        key = (row["tenant_id"], row["id"])
        row["windows"] = operations.usage(conn, config, *key, now)["windows"]
        last = store.attempts.last_send_outcome(conn, *key, now - FAILING_WINDOW)
        row["failing"] = last is not None and last != "sent"
    return rows


def _bounces(conn, config, now: float, tenant: str | None) -> dict:
    """The bounce panel: the suppression list by reason, the last day's notifications."""
    return {
        "enabled": config.bounces_enabled,
        "suppression": config.suppression,
        "suppressed": store.suppressions.counts(conn, tenant),
        "day": store.bounces.kinds_since(conn, now - DAY, tenant),
        "recent": store.bounces.recent(conn, now - DAY, BOUNCES_SHOWN, tenant),
    }


def _series(minutes: dict) -> tuple[list[int], list[int]]:
    """Sends and failed attempts per minute over the hour, every account summed."""
    sent, failed = [0] * 60, [0] * 60
    for buckets in minutes.values():
        for minute, outcomes in buckets.items():
            slot = min(minute, 59)  # an attempt at exactly `now` belongs to the last minute
            sent[slot] += outcomes.get("sent", 0)
            failed[slot] += sum(outcomes.get(o, 0) for o in FAILED_OUTCOMES)
    return sent, failed


def _tips(now: float, what: str) -> list[str]:
    start = now - HOUR
    return [f"{time.strftime('%H:%M', time.localtime(start + 60 * n))} {what}" for n in range(60)]


def _alerts(view: dict, problems: list[str]) -> list[tuple[str, str]]:
    """(level, text) of what someone on call should look at first; level bad or warn."""
    alerts = [("bad", problem) for problem in problems]
    if not view["processes"]:
        alerts.append(("bad", "No dispatcher or reporter has a heartbeat: is the stack running?"))
    alerts += [
        (
            "bad",
            f"Account {account_name(a['tenant_id'], a['id'])} is failing: its latest send "
            "attempt failed.",
        )
        for a in view["accounts"]
        if a["failing"]
    ]
    if not view["active"]:
        alerts.append(("warn", "Dispatching is suspended (asyncmail activate resumes it)."))
    waited = view["oldest_ready"]
    if waited > OLDEST_READY_ALERT and view["active"] and not view["test_mode"]:
        alerts.append(("warn", f"A ready message has waited {waited:.0f} s."))
    errors = view["totals"][Status.ERROR.value]
    if errors:
        alerts.append(
            ("warn", f"{errors} messages ended in error (asyncmail retry --status error).")
        )
    return alerts
