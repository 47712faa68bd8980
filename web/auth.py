"""Who may call the API: the token in ``X-API-Token`` or ``Authorization: Bearer``, compared in
constant time; without a configured token, loopback clients only.  ``/health`` is open.
The status page (/ui) authenticates with its session cookie instead (``web.session``)."""

from __future__ import annotations

import hmac
import ipaddress

from flask import abort, request

from web import session
from web.db import get_config

OPEN_PATHS = frozenset({"/health"})  # answered without a token: load balancers probe it


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def presented_token() -> str | None:
    """The token the request carries, if any."""
    token = request.headers.get("X-API-Token")
    if token is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    return token


def authenticate():
    """Refuse the request unless it carries the API token (or, without one, is local)."""
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
        return
    if session.is_ui_path(request.path):
        return session.require_session()
    token = presented_token()
    if token is None:
        abort(
            401,
            "Missing API token: send 'X-API-Token: <token>' or 'Authorization: Bearer <token>'.",
        )
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode("utf-8")):
        abort(401, "Wrong API token: check the value of [server] api_token.")
