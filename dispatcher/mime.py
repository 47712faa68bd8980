"""Building the RFC 5322 message and its SMTP envelope from a stored payload.

``email.message.EmailMessage`` with the SMTP policy does the encoding: RFC 2047 for non-ASCII
subjects and names, RFC 2231 for attachment file names, quoted-printable or base64 for
non-ASCII bodies (7-bit output, so servers without 8BITMIME take it).  Bcc addresses go only
into the envelope.  The ``Message-ID`` is the one intake stored with the message (the client's,
else ``<random@sender's domain>``), the same on every attempt, so a duplicate send is
recognisable downstream.

The email package costs ~400 µs a message, more than the SMTP transaction to a local relay.
The common case (no attachments, every header ASCII and short enough to need no folding) is
therefore written directly (``_render_simple``, ~20 µs); anything else takes the email
package.  tests/test_mime.py checks that both paths parse to the same message.
"""

from __future__ import annotations

import functools
import mimetypes
import quopri
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from common.addresses import angle_brackets, parse_address_list
from dispatcher.payload import Message

POLICY = policy.SMTP.clone(cte_type="7bit")  # CRLF line ends, 7-bit clean bodies
# Headers the builder owns; a custom header of the same name replaces ours, except these.
PROTECTED = {"bcc", "mime-version", "content-type", "content-transfer-encoding"}


class BuildError(ValueError):
    """The message cannot be expressed as MIME (deterministic: a retry would fail again)."""


@dataclass(frozen=True)
class Part:
    """An attachment's bytes, ready to attach."""

    filename: str
    data: bytes
    mime_type: str | None = None
    content_id: str | None = None


@dataclass(frozen=True)
class Envelope:
    """What the SMTP transaction needs."""

    sender: str
    recipients: list[str]
    data: bytes


@dataclass(frozen=True)
class Parsed:
    """The message's address fields, parsed once: (display name, address) pairs."""

    from_: tuple[str, str]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]

    @classmethod
    def of(cls, msg: Message) -> Parsed:
        """Parse the message's From (with from_name), To, Cc, Bcc and Reply-To."""
        name, addr = parse_address_list(msg.from_)[0]

        def pairs(value):
            return parse_address_list(value) if value else []

        return cls((msg.from_name or name, addr), pairs(msg.to), pairs(msg.cc), pairs(msg.bcc),
                   pairs(msg.reply_to))  # fmt: skip


def _addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    out = []
    for name, addr in pairs:
        local, _, domain = addr.rpartition("@")
        out.append(Address(display_name=name, username=local, domain=domain))
    return out


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The Date header for an epoch second (messages of the same second share it)."""
    return format_datetime(datetime.fromtimestamp(second, UTC))


def _guess_type(part: Part) -> tuple[str, str]:
    mime_type = part.mime_type or mimetypes.guess_type(part.filename)[0]
    maintype, _, subtype = (mime_type or "application/octet-stream").partition("/")
    if maintype == "multipart":  # cannot be an opaque leaf part
        return "application", "octet-stream"
    return maintype, subtype


def build(msg: Message, parts: list[Part], now: float, message_id: str) -> Envelope:
    """The envelope and the message with this Message-ID; raises BuildError when it cannot."""
    parsed = Parsed.of(msg)
    sender = parse_address_list(msg.return_path)[0][1] if msg.return_path else parsed.from_[1]
    recipients = list(dict.fromkeys(a for _, a in [*parsed.to, *parsed.cc, *parsed.bcc]))
    for addr in [sender, *recipients]:
        if not addr.isascii():
            raise BuildError(f"address {addr!r} needs SMTPUTF8, which is not supported")
    try:
        direct = None if parts else _render_simple(msg, parsed, now, message_id)
        data = direct or _render(msg, parsed, parts, now, message_id)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise BuildError(f"cannot build the message: {exc}") from None
    return Envelope(sender, recipients, data)


def _render(msg: Message, parsed: Parsed, parts: list[Part], now: float, message_id: str) -> bytes:
    email_msg = EmailMessage(policy=POLICY)
    _set_headers(email_msg, msg, parsed, now, message_id)
    email_msg.set_content(msg.body, subtype="html" if msg.is_html else "plain")
    for part in parts:
        maintype, subtype = _guess_type(part)
        if part.content_id:
            email_msg.add_related(
                part.data,
                maintype,
                subtype,
                cid=angle_brackets(part.content_id),
                disposition="inline",
                filename=part.filename,
            )
    for part in parts:
        if not part.content_id:
            maintype, subtype = _guess_type(part)
            email_msg.add_attachment(part.data, maintype, subtype, filename=part.filename)
    return email_msg.as_bytes()


def _set_headers(
    email_msg: EmailMessage, msg: Message, parsed: Parsed, now: float, message_id: str
) -> None:
    email_msg["From"] = _addresses([parsed.from_])[0]
    email_msg["To"] = _addresses(parsed.to)
    if parsed.cc:
        email_msg["Cc"] = _addresses(parsed.cc)
    if parsed.reply_to:
        email_msg["Reply-To"] = _addresses(parsed.reply_to)
    email_msg["Subject"] = msg.subject
    email_msg["Date"] = _date(int(now))
    email_msg["Message-ID"] = message_id
    for header, value in (msg.headers or {}).items():
        if header.lower() in PROTECTED:
            continue
        del email_msg[header]
        email_msg[header] = value


# -- the direct path --------------------------------------------------------------------------
MAX_HEADER_LINE = 78  # RFC 5322's recommended limit: longer headers need folding: email pkg
MAX_BODY_LINE = 998  # RFC 5322's hard limit for an unencoded (7bit) line


def _render_simple(msg: Message, parsed: Parsed, now: float, message_id: str) -> bytes | None:
    """The message without the email package, or None when it needs encoding or folding."""
    headers = [("From", formataddr(parsed.from_)), ("To", _simple_list(parsed.to))]
    if parsed.cc:
        headers.append(("Cc", _simple_list(parsed.cc)))
    if parsed.reply_to:
        headers.append(("Reply-To", _simple_list(parsed.reply_to)))
    headers.append(("Subject", msg.subject))
    headers.append(("Date", _date(int(now))))
    headers.append(("Message-ID", message_id))
    for name, value in (msg.headers or {}).items():
        if name.lower() not in PROTECTED:
            headers = [h for h in headers if h[0].lower() != name.lower()] + [(name, value)]
    lines = [f"{name}: {value}" for name, value in headers]
    if any(len(line) > MAX_HEADER_LINE or not line.isascii() for line in lines):
        return None
    cte, body = _simple_body(msg.body)
    subtype = "html" if msg.is_html else "plain"
    lines += [
        "MIME-Version: 1.0",
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {cte}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _simple_list(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(formataddr(pair) for pair in pairs)


def _simple_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line ends)."""
    lines = text.encode("utf-8").splitlines()
    if text.isascii() and all(len(line) <= MAX_BODY_LINE for line in lines):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    encoded = quopri.encodestring(b"\n".join(lines) + b"\n")
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")
