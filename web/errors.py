"""Every failure answers JSON ``{"ok": false, "error": "<a sentence>"}``, never HTML."""

from __future__ import annotations

import logging

import apsw
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestTimeout

from common import operations
from common.logs import fields
from web.db import get_config

logger = logging.getLogger(__name__)

DRAIN_LIMIT = 32 * 1024 * 1024  # most bytes of a refused body read so the client sees the 413
# answered before the body was read (or while it was too slow): the rest of it is not read,
# the connection is closed instead (web.front makes gunicorn honour Connection: close)
CLOSE_UNREAD = frozenset({401, 403, 408, 415})
REFUSAL_STATUS = {
    operations.Refusal.INVALID: 400,
    operations.Refusal.NOT_FOUND: 404,
    operations.Refusal.CONFLICT: 409,
}


def error_response(status: int, message: str, **extra) -> Response:
    """A JSON failure answer."""
    response = jsonify(ok=False, error=message, **extra)
    response.status_code = status
    return response


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
            f"The request body is larger than {get_config().max_request_bytes} bytes "
            "(max_request_bytes); send fewer or smaller messages per request."
        )
    return exc.description or exc.name


def _http_error(exc: HTTPException) -> Response:
    response = error_response(exc.code or 500, _describe(exc))
    if isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="asyncmail"'
    if exc.code == 413:
        _drain_body()
        response.headers["Connection"] = "close"  # the connection's framing is not trusted now
    if exc.code in CLOSE_UNREAD and _has_body():
        response.headers["Connection"] = "close"
    return response


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")


def _drain_body() -> None:
    """Read and drop what is left of a refused body.

    Closing a socket that still has unread request bytes makes the kernel send a reset, and a
    client still writing its body then sees "connection reset" instead of our 413.
    """
    stream = request.environ.get("wsgi.input")
    remaining = DRAIN_LIMIT
    while stream is not None and remaining > 0:
        try:
            chunk = stream.read(min(65536, remaining))
        except RequestTimeout:  # too slow to be worth waiting for: the connection closes
            return
        if not chunk:
            return
        remaining -= len(chunk)


def _refused(exc: operations.Refused) -> Response:
    """An operator action said no (common/operations): its sentence, with its kind's status."""
    return error_response(REFUSAL_STATUS[exc.kind], str(exc))


def _storage_unavailable(exc: Exception) -> Response:
    """The database stayed locked past its busy timeout, or the disk is full: retry later."""
    logger.error(fields(event="storage_unavailable", path=request.path, error=exc))
    response = error_response(
        503,
        f"The database is unavailable ({type(exc).__name__}); "
        "nothing was stored, retry in a few seconds.",
    )
    response.headers["Retry-After"] = "5"
    return response


def _internal_error(exc: Exception) -> Response:
    """A bug, never bad input: log it with its traceback, answer JSON 500."""
    logger.exception(fields(event="unhandled_error", method=request.method, path=request.path))
    return error_response(
        500,
        "Internal error; it has been logged. Retry later, and tell the operator if it persists.",
    )


def init_app(app: Flask) -> None:
    """Install the JSON error answers."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(operations.Refused, _refused)
    app.register_error_handler(apsw.BusyError, _storage_unavailable)
    app.register_error_handler(apsw.FullError, _storage_unavailable)
    app.register_error_handler(Exception, _internal_error)
