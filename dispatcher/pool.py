"""Pooled SMTP connections, one per account, each cut at its transaction's deadline.

Every connection is handed to the dispatcher's ``Guard`` before it connects, so the
deadline of a transaction (``Endpoint.budget``) cuts it wherever it stalls: a greeting
that never comes, a reply that is never finished, a body that will not drain.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common import crypto
from common.config import Config
from common.enums import Outcome
from common.guard import Guard
from dispatcher.smtp import Phase, Result, classify, error_text, transaction

NOOP_AFTER_IDLE = 3.0  # seconds: servers drop idle clients; a NOOP proves the link first
QUIT_SECONDS = 5.0  # for the QUITs of every pooled connection at shutdown, together
DEFAULT_TTL = 300  # seconds a default-account connection lives ([smtp] has no ttl key)
DEFAULT_TIMEOUT = 30.0  # seconds per connect and per command for the default account
# One transaction's deadline: a timeout each for connecting (greeting, EHLO, TLS, AUTH),
# for the envelope and for the reply to the final dot, plus the time the message takes
# at MIN_TRANSFER_RATE (25 MiB: 200 s).  Slower links would hold a dispatcher for hours.
BUDGET_TIMEOUTS = 3
MIN_TRANSFER_RATE = 128 * 1024  # bytes per second
DEFAULT_RCPT_PER_TRANSACTION = 100  # RFC 5321 §4.5.3.1.8: every server must take 100


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect for one account; equality decides whether to reconnect."""

    host: str
    port: int
    user: str | None
    password: str | None = field(repr=False)
    implicit_tls: bool
    starttls: bool
    timeout: float
    ttl: float
    rcpt_per_transaction: int = DEFAULT_RCPT_PER_TRANSACTION

    def budget(self, size: int) -> float:
        """Seconds one transaction of a ``size``-byte message may take, from connect on."""
        return BUDGET_TIMEOUTS * self.timeout + size / MIN_TRANSFER_RATE

    @classmethod
    def from_account(cls, row: dict, secret_key: str | None) -> Endpoint:
        """From an ``accounts`` row (password in stored form)."""
        use_tls = row.get("use_tls")
        return cls(
            host=row["host"],
            port=row["port"],
            user=row.get("user"),
            password=crypto.unseal(row.get("password"), secret_key),
            implicit_tls=row["port"] == 465 if use_tls is None else bool(use_tls),
            starttls=bool(row.get("starttls")),
            timeout=float(row.get("timeout") or DEFAULT_TIMEOUT),
            ttl=float(row.get("ttl") or DEFAULT_TTL),
            rcpt_per_transaction=int(
                row.get("max_recipients_per_transaction") or DEFAULT_RCPT_PER_TRANSACTION
            ),
        )

    @classmethod
    def from_config(cls, config: Config) -> Endpoint:
        """The implicit default account of the ``[smtp]`` section."""
        port = config.smtp_port or (
            465 if config.smtp_use_tls else 587 if config.smtp_starttls else 25
        )
        use_tls = config.smtp_use_tls
        return cls(
            host=config.smtp_host,
            port=port,
            user=config.smtp_user,
            password=crypto.unseal(config.smtp_password, config.secret_key),
            implicit_tls=port == 465 if use_tls is None else use_tls,
            starttls=config.smtp_starttls,
            timeout=DEFAULT_TIMEOUT,
            ttl=DEFAULT_TTL,
        )


class _Tracked:
    """An smtplib client handed to ``track`` before it connects: a stalled greeting is cut."""

    def __init__(self, track: Callable[[object], None], *args, **kwargs):
        track(self)  # its ``sock`` (None until connected) is what a deadline shuts down
        super().__init__(*args, **kwargs)


class _SMTP(_Tracked, smtplib.SMTP):
    pass


class _SMTPS(_Tracked, smtplib.SMTP_SSL):
    pass


def connect(
    endpoint: Endpoint,
    context: ssl.SSLContext,
    local_hostname: str,
    track: Callable[[object], None] = lambda smtp: None,
) -> smtplib.SMTP:
    """Open, greet, secure and authenticate one connection; raises on any failure."""
    if endpoint.implicit_tls:
        smtp = _SMTPS(track, endpoint.host, endpoint.port, local_hostname,
                      timeout=endpoint.timeout, context=context)  # fmt: skip
    else:
        smtp = _SMTP(track, endpoint.host, endpoint.port, local_hostname, timeout=endpoint.timeout)
    try:
        smtp.ehlo()
        if endpoint.starttls:
            smtp.starttls(context=context)
            smtp.ehlo()
        if endpoint.user:
            smtp.login(endpoint.user, endpoint.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


@dataclass
class _Pooled:
    smtp: smtplib.SMTP
    endpoint: Endpoint
    opened: float
    used: float


class Pool:
    """One open connection per account, reused across messages.

    A connection older than the account's ``ttl`` is closed; one idle longer than
    NOOP_AFTER_IDLE is checked with NOOP; one that turns out dead before anything was sent
    on it is replaced once, silently.  RSET follows a transaction that did not complete
    (after a completed DATA the server has already reset, RFC 5321 §4.1.1.4, so an RSET
    there would only cost a round trip per message).
    """

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        local_hostname: str | None = None,
        guard: Guard | None = None,
    ):
        self.context = context or ssl.create_default_context()
        self.clock = clock
        self.guard = guard or Guard()
        self.local_hostname = local_hostname or socket.getfqdn()
        self._open: dict[str | None, _Pooled] = {}

    def send(
        self, key: str | None, endpoint: Endpoint, sender: str, recipients: list[str], data: bytes
    ) -> Result:
        """One transaction over the account's connection, within its budget; never raises."""
        budget = endpoint.budget(len(data))
        with self.guard.within(budget, f"SMTP transaction deadline ({budget:.0f} s) passed"):
            result = self._send(key, endpoint, sender, recipients, data)
        if self.guard.cut is not None:
            result.detail = f"{result.detail} (cut: {self.guard.cut})"
        return result

    def _send(self, key, endpoint: Endpoint, sender, recipients, data) -> Result:
        pooled, reused = self._acquire(key, endpoint)
        if isinstance(pooled, Result):
            return pooled
        result = transaction(pooled.smtp, sender, recipients, data)
        stale = result.phase is Phase.MAIL and (result.lost or result.code == 421)
        if reused and stale and self.guard.cut is None:
            self.discard(key)  # a pooled link that died or was closed while idle: reconnect once
            pooled, _ = self._acquire(key, endpoint)
            if isinstance(pooled, Result):
                return pooled
            result = transaction(pooled.smtp, sender, recipients, data)
        self._after(key, pooled, result)
        return result

    def _acquire(self, key, endpoint: Endpoint) -> tuple[_Pooled | Result, bool]:
        now = self.clock()
        pooled = self._open.get(key)
        if pooled is not None:
            self.guard.track(pooled.smtp)  # before its QUIT, NOOP or send: all cut at once
        if pooled is not None and (
            pooled.endpoint != endpoint or now - pooled.opened >= endpoint.ttl
        ):
            self.discard(key, polite=True)
            pooled = None
        if pooled is not None and now - pooled.used >= NOOP_AFTER_IDLE and not _alive(pooled):
            self.discard(key)
            pooled = None
        if pooled is not None:
            return pooled, True
        try:
            smtp = connect(endpoint, self.context, self.local_hostname, self.guard.track)
        except (OSError, smtplib.SMTPException) as exc:
            code = getattr(exc, "smtp_code", None)
            outcome = classify(Phase.CONNECT, error=exc)
            return Result(outcome, Phase.CONNECT, code, error_text(exc), lost=True), False
        pooled = _Pooled(smtp, endpoint, now, now)
        self._open[key] = pooled
        return pooled, False

    def _after(self, key, pooled: _Pooled, result: Result) -> None:
        pooled.used = self.clock()
        if result.lost:
            self.discard(key)
        elif result.outcome is not Outcome.SENT:
            try:
                pooled.smtp.rset()
            except (OSError, smtplib.SMTPException):
                self.discard(key)

    def discard(self, key, polite: bool = False) -> None:
        """Forget an account's connection; QUIT first when it is believed healthy."""
        pooled = self._open.pop(key, None)
        if pooled is None:
            return
        try:
            if polite:
                pooled.smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            pooled.smtp.close()

    def close(self) -> None:
        """QUIT and close every connection (shutdown), all within QUIT_SECONDS."""
        with self.guard.within(QUIT_SECONDS, f"QUIT not answered within {QUIT_SECONDS:g} s"):
            for key, pooled in list(self._open.items()):
                self.guard.track(pooled.smtp)
                self.discard(key, polite=True)


def _alive(pooled: _Pooled) -> bool:
    try:
        return pooled.smtp.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False
