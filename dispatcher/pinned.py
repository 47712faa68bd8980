"""The requests session for attachment URLs, pinned to the address the SSRF check approved.

Only ``Fetcher`` imports this module, on the first URL attachment: requests and urllib3 cost
each dispatcher ~5 MiB of resident memory (measured), and most messages carry no URL.
Every connection the session opens is handed to ``track`` before it connects, so the
fetch deadline can cut it (a source that drips its headers or body).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from common.tracked import TrackingAdapter


class PinnedAdapter(TrackingAdapter):
    """Connects where the request URL says (the checked address) but speaks TLS to the name.

    The URL carries the address the SSRF check approved; the Host header carries the name,
    which becomes the TLS server name (SNI) and the name the certificate must match.  Every
    new connection goes to ``track`` (the fetch deadline).
    """

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        """requests' pool key, plus the TLS server name taken from the Host header."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        name = urlsplit("//" + request.headers.get("Host", "")).hostname
        if host_params["scheme"] == "https" and name:
            pool_kwargs.update(server_hostname=name, assert_hostname=name)
        return host_params, pool_kwargs


def pinned_session(
    session: requests.Session | None = None,
    track: Callable[[object], None] = lambda connection: None,
) -> requests.Session:
    """``session`` (a new one by default) with PinnedAdapter for http and https."""
    session = session or requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, PinnedAdapter(track))
    return session
