"""The HTTP side of proxy_sync: one kept-alive session that POSTs report bodies upstream.

Authentication: ``Authorization: Bearer <client_sync_token>`` when a token is configured,
else basic auth with ``client_sync_user``/``client_sync_password``.  With a signing key every
request also carries ``X-AsyncMail-Timestamp`` (epoch seconds) and ``X-AsyncMail-Signature``,
the hex HMAC-SHA256 of the timestamp's ASCII digits followed directly by the body bytes.

Each POST, from connecting to the last byte of the answer, runs under one deadline
(``REQUEST_DEADLINE``): requests' timeouts bound each read, so an upstream that drips its
answer a byte at a time would otherwise hold its tenant's reports for ever.  The guard's
thread shuts the socket down when the deadline passes, and the POST counts as failed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import requests

from common.config import Config
from common.guard import Guard
from common.tracked import TrackingAdapter
from reporter.body import encode_report

CONNECT_TIMEOUT = 5.0  # seconds: a local or LAN upstream accepts at once; longer means down
READ_TIMEOUT = 30.0  # seconds: below supervisord's stopwaitsecs, so TERM can wait for it
REQUEST_DEADLINE = READ_TIMEOUT  # seconds for a whole POST, however its bytes trickle in
TIMESTAMP_HEADER = "X-AsyncMail-Timestamp"
SIGNATURE_HEADER = "X-AsyncMail-Signature"


@dataclass(frozen=True)
class Answer:
    """What came back: ``ok`` for any 2xx; else the status (None without one) and why."""

    ok: bool
    status: int | None
    reason: str


def sign(key: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``timestamp + body`` (timestamp as ASCII digits, no separator)."""
    return hmac.new(key.encode(), timestamp.encode() + body, hashlib.sha256).hexdigest()


class SyncClient:
    """POSTs delivery reports to ``client_sync_url``; never raises on a network failure."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        signing_key: str | None = None,
        report_format: str = "delivery_report",
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
        deadline: float = REQUEST_DEADLINE,
    ):
        self.url = url
        self.signing_key = signing_key
        self.report_format = report_format
        self.timeout = timeout
        self.deadline = deadline
        self.guard = Guard()
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, TrackingAdapter(self.guard.track))
        self.session.headers["Content-Type"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif user:
            self.session.auth = (user, password or "")

    @classmethod
    def from_config(cls, config: Config, **kwargs) -> SyncClient | None:
        """A client for the configured upstream, or None when no ``client_sync_url`` is set."""
        if not config.client_sync_url:
            return None
        return cls(
            config.client_sync_url,
            user=config.client_sync_user,
            password=config.client_sync_password,
            token=config.client_sync_token,
            signing_key=config.client_sync_signing_key,
            report_format=config.report_format,
            **kwargs,
        )

    def post(self, items: list[dict], now: float) -> Answer:
        """POST one report; any 2xx is success whatever its body (the reference's clients)."""
        body = encode_report(items, self.report_format)
        headers = {}
        if self.signing_key:
            timestamp = str(int(now))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self.signing_key, timestamp, body)
        try:
            with self.guard.within(self.deadline, f"no whole answer within {self.deadline:g} s"):
                response = self.session.post(
                    self.url, data=body, headers=headers, timeout=self.timeout
                )
        except requests.RequestException as exc:
            # the class name only: requests' messages repeat the URL, which may hold a password
            return Answer(False, None, self.guard.cut or type(exc).__name__)
        if 200 <= response.status_code < 300:
            return Answer(True, response.status_code, "")
        return Answer(False, response.status_code, response.reason or "")

    def close(self) -> None:
        self.session.close()
        self.guard.close()
