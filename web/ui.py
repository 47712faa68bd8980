"""The status page at /ui: server-rendered HTML that refreshes itself, for people on call.

No script and no front-end build: Jinja templates (``web/templates/ui``) and inline SVG
charts (``web.charts``).  Access: with an api_token, the login form trades it for a session
cookie (``web.session``); without one, loopback clients only, as for the API.  Nothing
secret is shown: accounts come without passwords, and no configuration value is printed.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, redirect, render_template, request

from common import operations, replication, store
from common.enums import Status
from common.logs import fields
from common.store.attempts import FAILED_OUTCOMES
from web import charts, session
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


@blueprint.app_template_filter("clock")
def clock(ts: float | None) -> str:
    """Epoch seconds as the server's local date and time."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _page(template: str, status: int = 200, **context) -> tuple[str, int]:
    return render_template(template, refresh=REFRESH_SECONDS, **context), status


@blueprint.get("")
def index():
    """The status page."""
    config = get_config()
    view = overview(get_conn(), config, time.time())
    return _page("ui/index.html", **view, logout=bool(config.api_token))


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
    if not session.token_matches(request.form.get("token", ""), expected):
        logger.warning(fields(event="ui_login", result="wrong_token", client=request.remote_addr))
        return _page("ui/login.html", 401, error="Wrong token: use the [server] api_token.")
    response = redirect(session.PREFIX, 303)
    session.open_session(response, get_conn(), expected, time.time())
    logger.info(fields(event="ui_login", result="ok", client=request.remote_addr))
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
def overview(conn, config, now: float) -> dict:
    """Everything the page shows, read in one go."""
    queue = store.messages.counts_by_status_and_priority(conn, now)
    processes = operations.heartbeats(conn, now)
    accounts = _accounts(conn, config, now)
    ids = [a["id"] for a in accounts]
    minutes = store.attempts.per_minute(conn, ids, now - HOUR, now)
    sent, failed = _series(minutes)
    for account in accounts:
        hour = minutes[account["id"]].values()
        account["sent_hour"] = sum(b.get("sent", 0) for b in hour)
        account["failed_hour"] = sum(b.get(o, 0) for b in hour for o in FAILED_OUTCOMES)
    view = {
        "now": now,
        "active": store.settings.is_active(conn, config.active),
        "test_mode": config.test_mode,
        "queue": queue,
        "totals": {status: sum(row.values()) for status, row in queue.items()},
        "oldest_ready": store.messages.oldest_ready_age(conn, now),
        "processes": processes,
        "accounts": accounts,
        "sent_chart": charts.bars(sent, "#2e7d32", "messages sent per minute", _tips(now, "sent")),
        "failed_chart": charts.bars(
            failed, "#c62828", "failed attempts per minute", _tips(now, "failed")
        ),
        "sent_total": sum(sent),
        "failed_total": sum(failed),
        "failures": store.attempts.recent_failures(conn, ids, now - HOUR, FAILURES_SHOWN),
        "replication": replication.state(config, now),
        "lag_limit": operations.REPLICATION_LAG_LIMIT,
        "bounces": _bounces(conn, config, now),
    }
    problems = operations.health(processes, supervisor_runs=False)
    # the page cannot see supervisord: a live heartbeat says the stack runs
    runs = any(not p["stale"] for p in processes)
    problems += operations.replication_problems(view["replication"], runs)
    view["alerts"] = _alerts(view, problems)
    return view


def _accounts(conn, config, now: float) -> list[dict]:
    """Stored accounts (no password) and the [smtp] one, with usage and failing flag."""
    rows = store.accounts.list_all(conn)
    if config.has_default_account:
        rows.append({"id": None, "host": config.smtp_host, "port": config.smtp_port})
    for row in rows:
        row["windows"] = operations.usage(conn, config, row["id"], now)["windows"]
        last = store.attempts.last_send_outcome(conn, row["id"], now - FAILING_WINDOW)
        row["failing"] = last is not None and last != "sent"
    return rows


def _bounces(conn, config, now: float) -> dict:
    """The bounce panel: the suppression list by reason, the last day's notifications."""
    return {
        "enabled": config.bounces_enabled,
        "suppression": config.suppression,
        "suppressed": store.suppressions.counts(conn),
        "day": store.bounces.kinds_since(conn, now - DAY),
        "recent": store.bounces.recent(conn, now - DAY, BOUNCES_SHOWN),
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
    else:
        kinds = {p["kind"] for p in view["processes"] if not p["stale"]}
        expected = ("dispatcher", "reporter", *(("bouncer",) if view["bounces"]["enabled"] else ()))
        alerts += [("bad", f"No live {k}.") for k in expected if k not in kinds]
    alerts += [
        ("bad", f"Account {a['id'] or '(default)'} is failing: its latest send attempt failed.")
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
