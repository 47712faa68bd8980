"""The REST API: a Flask app factory; gunicorn serves ``web.wsgi:app``.

Every start-up path (gunicorn, the test client, any caller of ``create_app``) goes through
``create_app``, which installs authentication, JSON error answers and request metrics before
any route exists, so no configuration can produce an unauthenticated or HTML-answering app.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import os
import time

import apsw
from flask import Flask, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from common import db, metrics
from common.config import Config, load_config
from common.logs import fields

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # answered without a token: load balancers probe it
TRUTHY = frozenset({"1", "true", "yes", "on"})
DEFAULT_ACCOUNT = "default"  # metric label of the implicit [smtp] account, as in the reference
REFERENCE_COUNTERS = (metrics.SENT, metrics.ERRORS, metrics.DEFERRED, metrics.RATE_LIMITED)


class ApiFlask(Flask):
    """Flask whose automatic OPTIONS answer is JSON like every other answer."""

    def make_default_options_response(self) -> Response:
        allowed = sorted(super().make_default_options_response().allow)
        response = jsonify(ok=True, allow=allowed)
        response.headers["Allow"] = ", ".join(allowed)
        return response


def create_app(config: Config | None = None, **overrides) -> Flask:
    """Build the API for one configuration; every start-up path goes through here."""
    if config is None:
        config = load_config(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    from web.routes import blueprint  # routes import helpers from this module

    app = ApiFlask(__name__)
    app.config["ASYNCMAIL"] = config
    # One byte more than allowed: werkzeug silently truncates a streamed (chunked) body at
    # this limit, so the routes read up to it and answer 413 for anything past the real one.
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes + 1
    app.json.sort_keys = False
    app.before_request(_start_timer)
    app.before_request(_authenticate)
    app.after_request(_count_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(apsw.BusyError, _storage_unavailable)
    app.register_error_handler(apsw.FullError, _storage_unavailable)
    app.register_error_handler(Exception, _internal_error)
    app.register_blueprint(blueprint)
    for counter in REFERENCE_COUNTERS:  # the reference's names show before the first send
        counter.labels(DEFAULT_ACCOUNT)
    return app


# -- per-process plumbing -------------------------------------------------------------------
_connections: dict[tuple[int, str], object] = {}


def connection(config: Config):
    """This process's database connection, opened after fork on first use."""
    key = (os.getpid(), str(config.database))
    if key not in _connections:
        _connections[key] = db.connect(config.database, config.synchronous)
    return _connections[key]


def app_config() -> Config:
    """The configuration of the app serving the current request."""
    return current_app.config["ASYNCMAIL"]


def conn():
    """The database connection for the current request."""
    return connection(app_config())


# -- authentication -------------------------------------------------------------------------
def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _presented_token() -> str | None:
    token = request.headers.get("X-API-Token")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return token


def _authenticate():
    """Refuse the request unless it carries the API token (or, without one, is local)."""
    config = app_config()
    if request.path in OPEN_PATHS or (request.path == "/metrics" and config.metrics_public):
        return
    expected = config.api_token or None  # an empty token never authenticates anyone
    if expected is None:
        if not _is_loopback(request.remote_addr):
            abort(
                401,
                "No api_token is configured, so only loopback clients are served; "
                "set [server] api_token to accept remote clients.",
            )
        return
    token = _presented_token()
    if token is None:
        abort(
            401,
            "Missing API token: send 'X-API-Token: <token>' or 'Authorization: Bearer <token>'.",
        )
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode("utf-8")):
        abort(401, "Wrong API token: check the value of [server] api_token.")


# -- request metrics ------------------------------------------------------------------------
def _start_timer():
    g.started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, str(response.status_code)).inc()
    if "started" in g:
        metrics.HTTP_SECONDS.labels(route).observe(time.perf_counter() - g.started)
    return response


# -- errors as JSON -------------------------------------------------------------------------
def _describe(exc: HTTPException) -> str:
    """A sentence a person can act on, for the errors werkzeug raises by itself."""
    if exc.code == 404 and request.url_rule is None:
        return (
            f"No endpoint {request.method} {request.path}; the API is described at /openapi.json."
        )
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        return f"{request.method} is not allowed on {request.path}; use {allowed}."
    if exc.code == 413:
        return (
            f"The request body is larger than {app_config().max_request_bytes} bytes "
            "(max_request_bytes); send fewer or smaller messages per request."
        )
    return exc.description or exc.name


def _http_error(exc: HTTPException) -> Response:
    response = jsonify(ok=False, error=_describe(exc))
    response.status_code = exc.code or 500
    if isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="asyncmail"'
    if exc.code == 413:
        _drain_body()
        response.headers["Connection"] = "close"  # the connection's framing is not trusted now
    return response


DRAIN_LIMIT = 32 * 1024 * 1024  # most bytes of a refused body read so the client sees the 413


def _drain_body() -> None:
    """Read and drop what is left of a refused body.

    Closing a socket that still has unread request bytes makes the kernel send a reset, and a
    client still writing its body then sees "connection reset" instead of our 413.
    """
    stream = request.environ.get("wsgi.input")
    remaining = DRAIN_LIMIT
    while stream is not None and remaining > 0:
        chunk = stream.read(min(65536, remaining))
        if not chunk:
            return
        remaining -= len(chunk)


def _storage_unavailable(exc: Exception) -> Response:
    """The database stayed locked past its busy timeout, or the disk is full: retry later."""
    logger.error("storage unavailable %s", fields(path=request.path, error=exc))
    response = jsonify(
        ok=False,
        error=f"The database is unavailable ({type(exc).__name__}); "
        "nothing was stored, retry in a few seconds.",
    )
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _internal_error(exc: Exception) -> Response:
    """A bug, never bad input: log it with its traceback, answer JSON 500."""
    logger.exception("unhandled error %s", fields(method=request.method, path=request.path))
    response = jsonify(
        ok=False,
        error="Internal error; it has been logged. Retry later, "
        "and tell the operator if it persists.",
    )
    response.status_code = 500
    return response


def flag(name: str) -> bool:
    """A boolean query argument (true/1/yes/on)."""
    return request.args.get(name, "").strip().lower() in TRUTHY
