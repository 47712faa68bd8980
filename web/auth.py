"""Who may call the API, and in which tenant (docs/tenants.md).

The token comes in ``X-API-Token`` or ``Authorization: Bearer``.  ``[server] api_token`` is
the admin's, compared in constant time: the admin acts in the tenant its ``X-Tenant``
header names (the default tenant without one; the service-wide routes then act on the whole
service), and alone reaches the routes marked ``admin_only`` (tenants, /metrics).  A tenant
token (``amt_...``) is looked up by its hash and acts in its own tenant only: naming
another tenant is refused (403), and another tenant's ids are simply not found (404).
``/health`` is open.  The status page (/ui) authenticates with its session cookie instead
(``web.session``).

Without a configured api_token only loopback clients are served, as the admin; a loopback
client presenting a tenant token acts as that tenant (a wrong one is refused), so a tenant's
application can be tried out locally exactly as it will run.

Without a token, a loopback client may still be a web page in a local browser (or a page
whose name was rebound to 127.0.0.1): such requests are refused by their headers, which a
page cannot choose (a ``Host`` that is not a local name, an ``Origin`` that is not local)
or can choose only by asking first (a body that is not ``application/json``).  Everything is
decided from the headers, before any byte of the body is read.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from flask import abort, current_app, g, request

from common import store, tenants
from common.config import Config
from web import session
from web.caller import ADMIN, Caller, tenant_of
from web.db import get_config, get_conn

TENANT_HEADER = "X-Tenant"


OPEN_PATHS = frozenset({"/health"})  # answered without a token: load balancers probe it
LOCAL_NAMES = frozenset({"localhost", "localhost."})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # a bind address, never a name to call


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _is_local_name(name: str | None, config: Config) -> bool:
    """A host name (no port) a local client uses for this server."""
    name = (name or "").lower()
    if name in LOCAL_NAMES or (name == config.host.lower() and name not in ANY_ADDRESS):
        return True
    return _is_loopback(name)


def _refuse_web_pages(config: Config) -> None:
    """Without a token: refuse what a web page could send, from the headers alone."""
    host = urlsplit(f"//{request.host}").hostname
    if not _is_local_name(host, config):
        abort(
            403,
            f"No api_token is configured, so only requests addressed to a local name "
            f"(localhost, 127.0.0.1) are served, not to {request.host!r}; "
            "set [server] api_token to serve other names.",
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _is_local_name(urlsplit(origin).hostname, config):
        abort(
            403,
            f"No api_token is configured, so requests from web pages (Origin {origin!r}) "
            "are refused; set [server] api_token to serve them.",
        )
    has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
    if (has_body or request.content_type) and request.mimetype != "application/json":
        abort(
            415,
            "No api_token is configured, so a request body must be sent as "
            "'Content-Type: application/json' (curl: -H 'Content-Type: application/json').",
        )


def presented_token() -> str | None:
    """The token the request carries, if any."""
    token = request.headers.get("X-API-Token")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return token


def authenticate():
    """Refuse the request unless it carries the admin's or a tenant's token (or, without an
    api_token, is local); then settle the tenant it acts in."""
    config = get_config()
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
        _refuse_web_pages(config)
        caller = _loopback_caller()
    elif session.is_ui_path(request.path):
        return session.require_session()
    else:
        caller = _token_caller(expected)
    g.caller = _scoped(caller)
    view = current_app.view_functions.get(request.endpoint)
    if getattr(view, "admin_only", False) and not caller.admin:
        abort(403, "This route needs the admin token ([server] api_token), not a tenant's.")


def _loopback_caller() -> Caller:
    """No api_token: a loopback client is the admin, unless it presents a tenant token."""
    token = presented_token()
    if token is None or not tenants.is_tenant_token(token):
        return ADMIN
    caller = tenant_of(token)
    if caller is None:
        abort(401, "Unknown tenant token (a rotated token stops working at once).")
    return caller


def _token_caller(expected: str) -> Caller:
    token = presented_token()
    if token is None:
        abort(
            401,
            "Missing API token: send 'X-API-Token: <token>' or 'Authorization: Bearer <token>'.",
        )
    if hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode("utf-8")):
        return ADMIN
    caller = tenant_of(token) if tenants.is_tenant_token(token) else None
    if caller is None:
        abort(
            401,
            "Wrong API token: use [server] api_token, or a tenant's token (a rotated token "
            "stops working at once).",
        )
    return caller


def _scoped(caller: Caller) -> Caller:
    """The caller acting in the tenant ``X-Tenant`` names, when it may."""
    named = request.headers.get(TENANT_HEADER)
    if named is None:
        return caller
    named = named.strip()
    if not caller.admin:
        if named != caller.tenant:
            abort(403, f"This token belongs to tenant {caller.tenant!r}; it cannot act in "
                       f"tenant {named!r}.")  # fmt: skip
        return caller
    if not store.tenants.exists(get_conn(), named):
        abort(404, f"No tenant {named!r}; GET /tenants lists them.")
    return Caller(named, True)
