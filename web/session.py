"""The status page's session: a login form trades the API token (the admin's, or a
tenant's) for a cookie.

The cookie is never the token: it is ``<expiry>.<tenant>.<HMAC-SHA256(key, expiry, tenant
and token)>`` (tenant empty for the admin; a tenant's token enters as its stored hash), with
a random key kept in the settings table.  A stolen cookie opens the status page until it
expires and cannot be turned back into the token; changing ``api_token`` ends every admin
session, rotating a tenant's token ends that tenant's.
It is HttpOnly, SameSite=Strict and scoped to /ui; the login and logout POSTs also need an
Origin (or Referer) of this server, so no other site can forge them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

from flask import Response, g, redirect, request

from common import store
from web.caller import ADMIN, Caller
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


def _mac(conn, secret: str, who: str, expires: int) -> str:
    key = store.settings.get_or_create(conn, KEY_SETTING, secrets.token_hex(32))
    message = f"asyncmail-ui|{expires}|{who}|{secret}".encode()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()


def _secret(conn, who: str) -> str | None:
    """What a session of ``who`` ('' the admin, else a tenant id) is bound to."""
    return get_config().api_token if who == "" else store.tenants.token_hash(conn, who)


def open_session(response: Response, conn, caller: Caller, now: float) -> None:
    """Set the session cookie for this (already checked) caller on the response."""
    expires = int(now) + SESSION_SECONDS
    who = "" if caller.admin else caller.tenant
    response.set_cookie(
        COOKIE,
        f"{expires}.{who}.{_mac(conn, _secret(conn, who), who, expires)}",
        max_age=SESSION_SECONDS,
        path=PREFIX,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )


def close_session(response: Response) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Strict")


def _caller(conn, value: str, now: float) -> Caller | None:
    """The caller a cookie value stands for, while it is valid."""
    expires, _, rest = value.partition(".")
    who, _, mac = rest.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return None
    secret = _secret(conn, who)
    if secret is None:  # the tenant is gone
        return None
    good = _mac(conn, secret, who, int(expires)).encode()
    if not hmac.compare_digest(mac.encode("ascii", "replace"), good):
        return None
    return ADMIN if who == "" else Caller(who, False)


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
    caller = _caller(get_conn(), value, time.time()) if value else None
    if caller is None:
        return redirect(LOGIN, 303)
    g.caller = caller
    return None
