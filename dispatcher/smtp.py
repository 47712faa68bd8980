"""SMTP delivery with smtplib: pooled connections and a table that classifies outcomes.

The transaction is driven command by command (MAIL, RCPT, DATA, message, final dot) rather
than through ``SMTP.sendmail`` so the phase that failed is known: a failure before the final
dot was transmitted is safe to retry; a lost reply *after* it is ambiguous (the server may
have accepted the message) and is classified ``uncertain``.

Every connection is tracked by the dispatcher's ``Guard`` from before it connects, so the
deadline of a transaction (``budget``) cuts it wherever it stalls.
"""

from __future__ import annotations

import enum
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common import crypto
from common.config import Config
from common.enums import Outcome
from dispatcher.guard import Guard

logger = logging.getLogger(__name__)

NOOP_AFTER_IDLE = 3.0  # seconds: servers drop idle clients; a NOOP proves the link first
DEFAULT_TTL = 300  # seconds a default-account connection lives ([smtp] has no ttl key)
DEFAULT_TIMEOUT = 30.0  # seconds per connect and per command for the default account
# One transaction's deadline: a timeout each for connecting (greeting, EHLO, TLS, AUTH),
# for the envelope and for the reply to the final dot, plus the time the message takes
# at MIN_TRANSFER_RATE (25 MiB: 200 s).  Slower links would hold a dispatcher for hours.
BUDGET_TIMEOUTS = 3
MIN_TRANSFER_RATE = 128 * 1024  # bytes per second
DEFAULT_RCPT_PER_TRANSACTION = 100  # RFC 5321 §4.5.3.1.8: every server must take 100
TOO_MANY_RECIPIENTS = 452  # RFC 5321 §4.5.3.1.10: send the rest in another transaction


class Phase(enum.StrEnum):
    CONNECT = "connect"  # connect, greeting, EHLO, STARTTLS, AUTH
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command, before any of the message was sent
    BODY = "body"  # transmitting the message; the final dot is its last byte
    REPLY = "reply"  # the message and its final dot were sent; waiting for the answer


# What a reply code or an exception means in each phase.  Kinds: 2xx, 4xx, 5xx (reply
# classes), "account" (530 authentication or STARTTLS required, 534/535/538 AUTH refused),
# "lost" (timeout, dropped connection, socket or TLS error, garbled reply).  Connection-phase
# 5xx (a 554 greeting) and the account codes concern the account, not the message, so they
# are temporary: the operator fixes the account and the queue drains.
ACCOUNT_CODES = {530, 534, 535, 538}
_TABLE: dict[Phase, dict[str, Outcome]] = {
    Phase.CONNECT: {"4xx": Outcome.TEMPORARY, "5xx": Outcome.TEMPORARY, "lost": Outcome.TEMPORARY},
    Phase.MAIL: {"4xx": Outcome.TEMPORARY, "5xx": Outcome.PERMANENT, "lost": Outcome.TEMPORARY},
    Phase.RCPT: {"4xx": Outcome.TEMPORARY, "5xx": Outcome.PERMANENT, "lost": Outcome.TEMPORARY},
    Phase.DATA: {"4xx": Outcome.TEMPORARY, "5xx": Outcome.PERMANENT, "lost": Outcome.TEMPORARY},
    Phase.BODY: {"lost": Outcome.TEMPORARY},  # the final dot never left: nothing delivered
    Phase.REPLY: {
        "2xx": Outcome.SENT,
        "4xx": Outcome.TEMPORARY,
        "5xx": Outcome.PERMANENT,
        "lost": Outcome.UNCERTAIN,
    },
}


def kind_of(code: int | None = None, error: BaseException | None = None) -> str:
    """The column of the table for a reply code or an exception."""
    if error is not None:
        code = getattr(error, "smtp_code", None)
    if code in ACCOUNT_CODES:
        return "account"
    if code is not None and 200 <= code < 300:
        return "2xx"
    if code is not None and 400 <= code < 500:
        return "4xx"
    if code is not None and 500 <= code < 600:
        return "5xx"
    return "lost"


def classify(phase: Phase, code: int | None = None, error: BaseException | None = None) -> Outcome:
    """The outcome of a transaction that ended in ``phase`` with this code or exception."""
    return _TABLE[phase].get(kind_of(code, error), Outcome.TEMPORARY)  # account: temporary


@dataclass
class Result:
    """How one SMTP transaction ended."""

    outcome: Outcome
    phase: Phase
    code: int | None = None
    detail: str = ""
    refused: dict[str, list] = field(default_factory=dict)  # address -> [code, text]
    lost: bool = False  # the connection is unusable (exception), not merely refused
    accepted: list[str] = field(default_factory=list)  # recipients the server took
    pending: list[str] = field(default_factory=list)  # recipients still to send to later


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


def reply_text(text: bytes | str) -> str:
    """A server reply as one printable line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(text.split())


def _error_text(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{error.smtp_code} {reply_text(error.smtp_error)}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _with_final_dot(data: bytes) -> bytes:
    """Dot-stuffed message with its terminating CRLF.CRLF, as smtplib.data() sends it."""
    stuffed = _LEADING_DOT.sub(b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class _Progress:
    """How far a transaction got: the phase a failure belongs to."""

    phase = Phase.MAIL


def transaction(smtp: smtplib.SMTP, sender: str, recipients: list[str], data: bytes) -> Result:
    """MAIL, RCPT..., DATA and the message on an open connection; never raises.

    With PIPELINING (RFC 2920) the envelope goes out in one write and costs one round trip
    instead of one per command; the replies are read and judged in order either way.
    """
    progress = _Progress()
    try:
        return _transaction(smtp, sender, recipients, data, progress)
    except (OSError, smtplib.SMTPException) as exc:
        code = getattr(exc, "smtp_code", None)
        phase = progress.phase
        return Result(classify(phase, error=exc), phase, code, _error_text(exc), lost=True)


def _transaction(smtp, sender, recipients, data, progress: _Progress) -> Result:
    # Addresses were validated as bare addr-specs at intake, so they need only the brackets
    # (smtplib.quoteaddr would parse each one again).
    lines = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{rcpt}>" for rcpt in recipients), "DATA"]
    pipelined = smtp.has_extn("pipelining")
    replies = _envelope_replies(smtp, lines, pipelined, progress)
    refused, accepted = {}, []
    for rcpt, (code, text) in zip(recipients, replies[1 : 1 + len(recipients)], strict=False):
        if code in (250, 251):
            accepted.append(rcpt)
        else:
            refused[rcpt] = [code, reply_text(text)]
    if replies[0][0] != 250:
        result = _refused(Phase.MAIL, *replies[0])
    elif len(refused) == len(recipients):
        result = all_refused(refused)
    elif replies[-1][0] != 354:
        result = _refused(Phase.DATA, *replies[-1])
    else:
        progress.phase = Phase.BODY
        smtp.send(_with_final_dot(data))
        progress.phase = Phase.REPLY
        code, text = smtp.getreply()
        return Result(classify(Phase.REPLY, code), Phase.REPLY, code, reply_text(text), refused,
                      accepted=accepted)  # fmt: skip
    if len(replies) == len(lines) and replies[-1][0] == 354:
        smtp.send(".\r\n")  # DATA accepted although the envelope failed: end it empty
        smtp.getreply()
    return result


def _envelope_replies(smtp, lines: list[str], pipelined: bool, progress: _Progress) -> list:
    """Replies to MAIL, each RCPT and DATA; unpipelined, it stops where the rest must fail."""
    if pipelined:
        smtp.send("".join(f"{line}\r\n" for line in lines))
    replies: list[tuple[int, bytes]] = []
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        progress.phase = Phase.MAIL if index == 0 else Phase.DATA if last else Phase.RCPT
        if not pipelined:
            if replies and replies[0][0] != 250:
                break  # MAIL refused: no transaction to add to
            if last and not any(code in (250, 251) for code, _ in replies[1:]):
                break  # no recipient accepted: DATA would be refused
            smtp.send(f"{line}\r\n")
        replies.append(smtp.getreply())
    return replies


def _refused(phase: Phase, code: int, text: bytes) -> Result:
    outcome = classify(phase, code)
    if outcome is Outcome.SENT:  # a 2xx where 250/354 belongs: a confused server
        outcome = Outcome.TEMPORARY
    return Result(outcome, phase, code, f"{code} {reply_text(text)}")


def all_refused(refused: dict[str, list]) -> Result:
    """Every recipient refused: any 4xx makes it worth a retry, else it is final."""
    codes = [code for code, _ in refused.values()]
    code = min(codes, key=lambda c: (kind_of(c) != "4xx", c))
    detail = "all recipients refused: " + "; ".join(
        f"{addr}: {c} {text}" for addr, (c, text) in refused.items()
    )
    return Result(classify(Phase.RCPT, code), Phase.RCPT, code, detail, refused)


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
        if pooled is not None and (
            pooled.endpoint != endpoint or now - pooled.opened >= endpoint.ttl
        ):
            self.discard(key, polite=True)
            pooled = None
        if pooled is not None:
            self.guard.track(pooled.smtp)
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
            return Result(outcome, Phase.CONNECT, code, _error_text(exc), lost=True), False
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
        """QUIT and close every connection (shutdown)."""
        for key in list(self._open):
            self.discard(key, polite=True)


def _alive(pooled: _Pooled) -> bool:
    try:
        return pooled.smtp.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False
