"""The REST API: a Flask app factory; gunicorn serves ``web.wsgi:app``."""

from __future__ import annotations

import hmac
import ipaddress
import os
import time

from flask import Flask, Response, abort, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from common import crypto, db, intake, metrics, store, wakeup
from common.config import Config, load_config
from common.models import MAX_BATCH, Account, explain, parse_priority
from common.status import Status
from web.openapi import OPENAPI

OPEN_PATHS = {"/health"}  # answered without a token


def create_app(config: Config | None = None, **overrides) -> Flask:
    """Build the API for one configuration; every start-up path goes through here."""
    config = config or load_config(**overrides)
    app = Flask(__name__)
    app.config["ASYNCMAIL"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False
    app.before_request(_authenticate)
    app.before_request(_start_timer)
    app.after_request(_count_request)
    app.register_error_handler(HTTPException, _json_error)
    app.register_blueprint(_routes())
    return app


# -- per-process plumbing -------------------------------------------------------------------
_connections: dict[tuple[int, str], object] = {}


def connection(config: Config):
    """This process's database connection, opened after fork on first use."""
    key = (os.getpid(), str(config.database))
    if key not in _connections:
        _connections[key] = db.connect(config.database, config.synchronous)
    return _connections[key]


def _config() -> Config:
    from flask import current_app

    return current_app.config["ASYNCMAIL"]


def _conn():
    return connection(_config())


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _presented_token() -> str | None:
    token = request.headers.get("X-API-Token")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return token


def _authenticate():
    config = _config()
    if request.path in OPEN_PATHS or (request.path == "/metrics" and config.metrics_public):
        return None
    if config.api_token is None:
        if not _is_loopback(request.remote_addr):
            abort(401, "No api_token is configured, so only loopback clients are served.")
        return None
    token = _presented_token()
    if token is None or not hmac.compare_digest(token.encode(), config.api_token.encode()):
        abort(401, "Missing or wrong API token: send X-API-Token or Authorization: Bearer.")
    return None


def _start_timer():
    g.started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
    if "started" in g:
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - g.started)
    return response


def _json_error(exc: HTTPException):
    return jsonify(ok=False, error=exc.description), exc.code


def _body() -> dict:
    """The request's JSON object, or a 400 that says what is wrong."""
    data = request.get_json(force=True, silent=True)
    if data is None:
        abort(400, "The request body is not valid JSON.")
    if not isinstance(data, dict):
        abort(400, "The request body must be a JSON object.")
    return data


def _routes():
    from flask import Blueprint

    bp = Blueprint("api", __name__)

    @bp.get("/health")
    def health():
        try:
            _conn().execute("SELECT 1").fetchall()
        except Exception as exc:  # any database failure means unhealthy
            return jsonify(ok=False, status="unavailable", error=f"database: {exc}"), 503
        return jsonify(ok=True, status="ok")

    @bp.get("/status")
    def status():
        config, conn, now = _config(), _conn(), time.time()
        return jsonify(
            ok=True,
            active=store.is_active(conn, config.active),
            test_mode=config.test_mode,
            counts=store.status_counts(conn, now),
            pending_by_priority=store.pending_by_priority(conn),
            oldest_ready_age_seconds=round(store.oldest_ready_age(conn, now), 3),
            processes=store.heartbeats(conn, now),
        )

    @bp.post("/commands/add-messages")
    def add_messages():
        body = _body()
        items = body.get("messages")
        if not isinstance(items, list):
            abort(400, "'messages' must be a list of message objects.")
        if len(items) > MAX_BATCH:
            abort(400, f"At most {MAX_BATCH} messages per request; split the batch.")
        default_priority = None
        if body.get("default_priority") is not None:
            try:
                default_priority = parse_priority(body["default_priority"])
            except ValueError:
                abort(400, "'default_priority' must be 0-3 or immediate/high/medium/low.")
        result = intake.accept_batch(_conn(), _config(), items, time.time(), default_priority)
        if items and not result.queued:
            return jsonify(ok=False, error="No message was valid; see 'rejected'.",
                           queued=0, rejected=result.rejected), 400
        return jsonify(ok=True, queued=len(result.queued), rejected=result.rejected)

    @bp.post("/commands/delete-messages")
    def delete_messages():
        ids = _body().get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            abort(400, "'ids' must be a list of message id strings.")
        out = store.delete_messages(_conn(), ids, time.time())
        return jsonify(ok=True, removed=len(out["removed"]), not_found=out["not_found"],
                       in_flight=out["in_flight"])

    @bp.post("/commands/cleanup-messages")
    def cleanup_messages():
        body = _body() if request.get_data() else {}
        older = body.get("older_than_seconds", _config().delivery_report_retention_seconds)
        if isinstance(older, bool) or not isinstance(older, int) or older < 0:
            abort(400, "'older_than_seconds' must be a non-negative integer.")
        removed = store.purge_reported(_conn(), time.time() - older)
        return jsonify(ok=True, removed=removed)

    @bp.post("/commands/run-now")
    def run_now():
        config = _config()
        store.set_setting(_conn(), "run_now_at", repr(time.time()))
        woken = wakeup.notify(config.run_dir, wakeup.DISPATCHER)
        woken += wakeup.notify(config.run_dir, wakeup.REPORTER)
        return jsonify(ok=True, woken=woken)

    @bp.post("/commands/suspend")
    def suspend():
        store.set_active(_conn(), False)
        return jsonify(ok=True, active=False)

    @bp.post("/commands/activate")
    def activate():
        store.set_active(_conn(), True)
        wakeup.notify(_config().run_dir, wakeup.DISPATCHER)
        return jsonify(ok=True, active=True)

    @bp.post("/account")
    def add_account():
        try:
            account = Account.model_validate(_body())
        except ValidationError as exc:
            abort(400, "Invalid account: " + explain(exc) + ".")
        row = account.model_dump()
        row["password"] = crypto.seal(account.password, _config().secret_key)
        conn = _conn()
        store.upsert_account(conn, row, int(time.time()))
        wakeup.notify(_config().run_dir, wakeup.DISPATCHER)
        return jsonify(ok=True, account=store.get_account(conn, account.id))

    @bp.get("/accounts")
    def accounts():
        return jsonify(ok=True, accounts=store.list_accounts(_conn()))

    @bp.delete("/account/<path:account_id>")
    def delete_account(account_id: str):
        purge = request.args.get("purge", "").lower() in {"1", "true", "yes"}
        deleted, unsent = store.delete_account(_conn(), account_id, purge)
        if deleted:
            return jsonify(ok=True, removed=account_id, purged_messages=unsent)
        if unsent:
            abort(409, f"Account {account_id!r} has {unsent} unsent messages; "
                       "delete them first or pass ?purge=true.")
        abort(404, f"No account {account_id!r}.")

    @bp.get("/messages")
    def list_messages():
        args = request.args
        try:
            limit = int(args.get("limit", 100))
            cursor = int(args.get("cursor", 0))
            status_filter = Status(args["status"]) if args.get("status") else None
        except ValueError:
            abort(400, "limit and cursor must be integers; status one of "
                       + ", ".join(s.value for s in Status) + ".")
        if not 1 <= limit <= 1000:
            abort(400, "limit must be between 1 and 1000.")
        rows, next_cursor = store.list_messages(
            _conn(), time.time(), status=status_filter,
            active_only=args.get("active_only", "").lower() in {"1", "true", "yes"},
            account_id=args.get("account_id") or None, limit=limit, cursor=cursor,
        )
        return jsonify(ok=True, messages=rows, next_cursor=next_cursor)

    @bp.get("/messages/<path:message_id>")
    def get_message(message_id: str):
        record = store.get_message(_conn(), message_id, time.time())
        if record is None:
            abort(404, f"No message {message_id!r}.")
        return jsonify(ok=True, **record)

    @bp.get("/metrics")
    def scrape():
        body = metrics.render(_conn)
        return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")

    @bp.get("/openapi.json")
    def openapi():
        return jsonify(OPENAPI)

    return bp
