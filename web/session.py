"""The status page's session: a login form trades the API token for a cookie.

The cookie is never the token: it is ``<expiry>.<HMAC-SHA256(key, expiry and token)>``, with
a random key kept in the settings table.  A stolen cookie opens the status page until it
expires and cannot be turned back into the token; changing ``api_token`` ends every session.
It is HttpOnly, SameSite=Strict and scoped to /ui; the login and logout POSTs also need an
Origin (or Referer) of this server, so no other site can forge them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from flask import Response, redirect, request

from common import store
from web.db import get_config, get_conn

PREFIX = "/ui"
LOGIN = "/ui/login"
OPEN = frozenset({LOGIN, "/ui/logout"})  # reachable without a session (they check Origin)
COOKIE = "asyncmail_ui"
SESSION_SECONDS = 12 * 3600  # a working day; then the token is asked for again
KEY_SETTING = "ui_session_key"  # settings row holding the HMAC key (hex), made on first use


def is_ui_path(path: str) -> bool:
    """True for the status page's paths."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8"))


def _mac(conn, token: str, expires: int) -> str:
    key = store.settings.get_or_create(conn, KEY_SETTING, secrets.token_hex(32))
    message = f"asyncmail-ui|{expires}|{token}".encode()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()


def open_session(response: Response, conn, token: str, now: float) -> None:
    """Set the session cookie for this (already checked) token on the response."""
    expires = int(now) + SESSION_SECONDS
    response.set_cookie(
        COOKIE,
        f"{expires}.{_mac(conn, token, expires)}",
        max_age=SESSION_SECONDS,
        path=PREFIX,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def close_session(response: Response) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Strict")


def _valid(conn, value: str, token: str, now: float) -> bool:
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    return hmac.compare_digest(
        mac.encode("ascii", "replace"), _mac(conn, token, int(expires)).encode()
    )


def same_origin() -> bool:
    """True when the browser says the request comes from a page of this server.

    Browsers send Origin with every POST ("null" from a file or a sandbox: refused); Referer
    is the fallback.  The host and port must be the ones this request was sent to.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer") or ""
    parts = urlsplit(source)
    return parts.scheme in {"http", "https"} and parts.netloc == request.host


def require_session() -> Response | None:
    """Before a status page request (a token is configured): a valid cookie, or the login."""
    if request.path in OPEN:
        return None
    value = request.cookies.get(COOKIE, "")
    if value and _valid(get_conn(), value, get_config().api_token, time.time()):
        return None
    return redirect(LOGIN, 303)
