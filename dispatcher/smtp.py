"""One SMTP transaction with smtplib, and the table that classifies how it ended.

The transaction is driven command by command (MAIL, RCPT, DATA, message, final dot) rather
than through ``SMTP.sendmail`` so the phase that failed is known: a failure before the final
dot was transmitted is safe to retry; a lost reply *after* it is ambiguous (the server may
have accepted the message) and is classified ``uncertain``.

Connections, their pool and their deadlines are in ``dispatcher.pool``.
"""

from __future__ import annotations

import enum
import re
import smtplib
from dataclasses import dataclass, field

from common.enums import Outcome

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


def reply_text(text: bytes | str) -> str:
    """A server reply as one printable line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(text.split())


def error_text(error: BaseException) -> str:
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
        return Result(classify(phase, error=exc), phase, code, error_text(exc), lost=True)


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
