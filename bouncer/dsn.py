"""Delivery status notifications: recognised conservatively, read for what they say.

A mail of the bounce mailbox counts as a notification only when its structure says so:

  rfc3464  multipart/report; report-type=delivery-status with a message/delivery-status part
           (RFC 3464): Postfix, Gmail, Amazon SES's bounce mails, Exim 4.8x and later,
           Sendmail, Exchange ...
  arf      multipart/report; report-type=feedback-report (RFC 5965): a spam complaint
  ses      an Amazon SES notification in JSON (Bounce or Complaint), as SNS mails it
  exim     Exim's plain-text bounce: X-Failed-Recipients and Exim's own wording
  gmail    Gmail's plain-text bounce: X-Failed-Recipients and Google's own wording
Anything else (an auto-reply, a person's answer, spam, a vague "could not deliver") is not
one, and goes to the unmatched folder untouched.  What a notification says about each
recipient is read from its fields, never guessed from prose: a recipient without an
action and an address is left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email import message_from_string
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32

from common.suppression import enhanced_status

MAX_TEXT = 256 * 1024  # characters of a plain-text part searched: the rest is the original
MAX_DIAGNOSTIC = 1000  # characters of a diagnostic kept
MESSAGE_ID = re.compile(r"<[^<>\s]+>")
SMTP_REPLY = re.compile(r"^[ \t]*([245])\d\d[ -]", re.M)
STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")
ORIGINAL_PARTS = ("message/rfc822", "message/global")
ENCODED = {"base64", "quoted-printable"}  # transfer encodings the parser does not undo
HEADER_PARTS = ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers")
# headers of a notification and of its original that may name our envelope sender (VERP)
ENVELOPE_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
ORIGINAL_ENVELOPE_HEADERS = ("Return-Path", "Sender", "Errors-To")


@dataclass(frozen=True)
class Recipient:
    """What the notification says about one recipient."""

    address: str
    action: str  # failed, delayed, delivered, relayed, expanded; complained (arf, ses)
    status: str | None  # RFC 3463, "5.1.1"
    diagnostic: str | None

    @property
    def kind(self) -> str:
        """hard (5.x.x), soft (4.x.x or no status), complaint."""
        if self.action == "complained":
            return "complaint"
        return "hard" if self.status and self.status.startswith("5") else "soft"


@dataclass(frozen=True)
class Notification:
    """A recognised notification: its shape, its recipients and what names the original."""

    shape: str
    recipients: tuple[Recipient, ...]
    message_ids: tuple[str, ...]  # Message-IDs of the original, the most telling first
    envelope: tuple[str, ...]  # texts that may hold our VERP envelope sender


def load(raw: bytes) -> Message:
    """A mail as the email package reads it (lenient: never raises on a malformed mail)."""
    return BytesParser(policy=compat32).parsebytes(raw)


def parse(msg: Message) -> Notification | None:
    """The notification this mail is, or None when it is not one."""
    for recognise in (_rfc3464, _arf, _ses, _plain):
        found = recognise(msg)
        if found is not None and found.recipients:
            return found
    return None


# -- RFC 3464 and RFC 5965 -------------------------------------------------------------------
def _report(msg: Message, report_type: str) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type") or "").lower() == report_type
    )


def _rfc3464(msg: Message) -> Notification | None:
    if not _report(msg, "delivery-status"):
        return None
    part = _first_part(msg, STATUS_PARTS)
    blocks = _blocks(part) if part is not None else []
    if len(blocks) < 2:  # the per-message fields, then one block per recipient
        return None
    recipients = tuple(r for r in map(_dsn_recipient, blocks[1:]) if r is not None)
    original = _original(msg)
    envelope = [blocks[0].get("x-postfix-sender", "")]
    return Notification(
        "rfc3464", recipients, _message_ids(original, msg), _envelope(msg, original, envelope)
    )


def _dsn_recipient(block: dict[str, str]) -> Recipient | None:
    address = _address(block.get("original-recipient")) or _address(block.get("final-recipient"))
    action = block.get("action", "").strip().lower()
    if not address or not action:
        return None
    diagnostic = _clip(block.get("diagnostic-code"))
    status = enhanced_status(block.get("status")) or enhanced_status(diagnostic)
    return Recipient(address, action, status, diagnostic)


def _arf(msg: Message) -> Notification | None:
    if not _report(msg, "feedback-report"):
        return None
    part = _first_part(msg, ("message/feedback-report",))
    blocks = _blocks(part) if part is not None else []
    if not blocks:
        return None
    fields, original = blocks[0], _original(msg)
    address = _address(fields.get("original-rcpt-to"))
    if address is None and original is not None:
        to = [a for a in _addresses(original.get_all("To", [])) if "@" in a]
        address = to[0] if len(to) == 1 else None  # only when the original says it clearly
    if address is None:
        return None
    feedback = fields.get("feedback-type", "abuse").strip().lower()
    recipient = Recipient(address, "complained", None, f"feedback-type: {feedback}")
    envelope = [fields.get("original-mail-from", "")]
    return Notification(
        "arf", (recipient,), _message_ids(original, msg), _envelope(msg, original, envelope)
    )


def _blocks(part: Message) -> list[dict[str, str]]:
    """The header blocks of a status or feedback part: {lower-case field: unfolded value}."""
    payload = part.get_payload()
    encoded = str(part.get("Content-Transfer-Encoding", "")).strip().lower() in ENCODED
    if isinstance(payload, list) and not encoded:  # the parser split the blocks already
        messages = [m for m in payload if isinstance(m, Message)]
    else:  # encoded, or a type the parser does not split (message/global-delivery-status)
        text = _decoded(part) if not isinstance(payload, list) else _undo(payload, part)
        messages = [message_from_string(b) for b in re.split(r"\r?\n\s*\r?\n", text) if b.strip()]
    return [{k.lower(): _unfold(v) for k, v in reversed(m.items())} for m in messages if m.keys()]


def _undo(blocks: list, part: Message) -> str:
    """The text of an encoded part the parser split as if it were not encoded."""
    raw = "\n".join(m.as_string() for m in blocks if isinstance(m, Message))
    plain = Message()
    plain["Content-Transfer-Encoding"] = part["Content-Transfer-Encoding"]
    plain.set_payload(raw, part.get_content_charset() or "utf-8")
    return _decoded(plain)


def _original(msg: Message) -> Message | None:
    """The headers of the message the notification is about, when it returns them."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind in ORIGINAL_PARTS and isinstance(part.get_payload(), list):
            return part.get_payload()[0]
        if kind in HEADER_PARTS:
            return HeaderParser(policy=compat32).parsestr(_decoded(part).lstrip())
    return None


# -- Amazon SES notifications (JSON) -----------------------------------------------------------
SES_TYPES = {"Bounce", "Complaint"}


def _ses(msg: Message) -> Notification | None:
    text = _first_text(msg).strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
        if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])  # the SNS envelope around it
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("notificationType") or data.get("eventType")
    if kind not in SES_TYPES:
        return None
    mail = data.get("mail") or {}
    recipients = _ses_bounce(data.get("bounce") or {}) if kind == "Bounce" else _ses_complaint(data)
    headers = {h.get("name", "").lower(): h.get("value", "") for h in mail.get("headers") or []}
    common = mail.get("commonHeaders") or {}
    ids = MESSAGE_ID.findall(f"{headers.get('message-id', '')} {common.get('messageId', '')}")
    envelope = tuple(t for t in (str(mail.get("source", "")), headers.get("return-path")) if t)
    return Notification("ses", recipients, tuple(dict.fromkeys(ids)), envelope)


def _ses_bounce(bounce: dict) -> tuple[Recipient, ...]:
    fallback = {"Permanent": "5.0.0", "Transient": "4.0.0"}.get(bounce.get("bounceType"))
    found = []
    for item in bounce.get("bouncedRecipients") or []:
        address = _address(item.get("emailAddress"))
        if address:
            diagnostic = _clip(item.get("diagnosticCode"))
            status = enhanced_status(item.get("status")) or enhanced_status(diagnostic)
            action = str(item.get("action") or "failed").lower()
            found.append(Recipient(address, action, status or fallback, diagnostic))
    return tuple(found)


def _ses_complaint(data: dict) -> tuple[Recipient, ...]:
    complaint = data.get("complaint") or {}
    feedback = complaint.get("complaintFeedbackType") or "abuse"
    return tuple(
        Recipient(address, "complained", None, f"feedback-type: {feedback}")
        for item in complaint.get("complainedRecipients") or []
        if (address := _address(item.get("emailAddress")))
    )


# -- plain-text bounces with X-Failed-Recipients ----------------------------------------------
# (the words that identify the shape, the line the returned original follows, the words
# that make a failure permanent)
PLAIN_SHAPES = {
    "exim": (
        "This message was created automatically by mail delivery software",
        re.compile(r"^-+ This is a copy of the message.*$", re.M),
        "This is a permanent error",
    ),
    "gmail": (
        "Delivery to the following recipient",
        re.compile(r"^-+ Original message -+\s*$", re.M),
        "failed permanently",
    ),
}


def _plain(msg: Message) -> Notification | None:
    failed = _addresses(msg.get_all("X-Failed-Recipients", []))
    if not failed:
        return None
    text = _first_text(msg)
    for shape, (words, marker, permanent) in PLAIN_SHAPES.items():
        if words in text:
            cut = marker.search(text)
            body, original = text, None
            if cut:
                body = text[: cut.start()]
                original = HeaderParser(policy=compat32).parsestr(text[cut.end() :].lstrip())
            recipients = _segments(body, failed, permanent in body)
            return Notification(
                shape, recipients, _message_ids(original, msg), _envelope(msg, original, [])
            )
    return None


def _segments(body: str, failed: list[str], permanent: bool) -> tuple[Recipient, ...]:
    """Each failed address with the first SMTP reply written after it, before the next one."""
    lowered = body.lower()
    starts = sorted((lowered.find(a.lower()), a) for a in failed)
    found = []
    for index, (start, address) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(body)
        reply = SMTP_REPLY.search(body, start, end) if start >= 0 else None
        diagnostic = _clip(body[reply.start() :].splitlines()[0]) if reply else None
        status = enhanced_status(diagnostic) or (f"{reply.group(1)}.0.0" if reply else None)
        found.append(Recipient(address, "failed", status or ("5.0.0" if permanent else None),
                               diagnostic))  # fmt: skip
    return tuple(found)


# -- helpers -----------------------------------------------------------------------------------
def _first_part(msg: Message, kinds: tuple[str, ...]) -> Message | None:
    return next((p for p in msg.walk() if p.get_content_type() in kinds), None)


def _first_text(msg: Message) -> str:
    """The first text/plain part, decoded (at most MAX_TEXT characters)."""
    part = _first_part(msg, ("text/plain",))
    return _decoded(part)[:MAX_TEXT] if part is not None else ""


def _decoded(part: Message) -> str:
    """A part's content as text, transfer encoding undone, in its charset (lenient)."""
    data = part.get_payload(decode=True)
    if data is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return data.decode("utf-8", "replace")


def _message_ids(original: Message | None, msg: Message) -> tuple[str, ...]:
    """The original's Message-ID, then those the notification's own threading headers name."""
    found = MESSAGE_ID.findall(str(original.get("Message-ID", ""))) if original else []
    for name in ("In-Reply-To", "References"):
        found += MESSAGE_ID.findall(" ".join(str(v) for v in msg.get_all(name, [])))
    return tuple(dict.fromkeys(found))


def _envelope(msg: Message, original: Message | None, extra: list[str]) -> tuple[str, ...]:
    texts = [str(v) for name in ENVELOPE_HEADERS for v in msg.get_all(name, [])]
    if original is not None:
        texts += [str(v) for n in ORIGINAL_ENVELOPE_HEADERS for v in original.get_all(n, [])]
    return tuple(t for t in [*texts, *extra] if t)


def _address(value: object) -> str | None:
    """The address of a DSN field ("rfc822; a@b", "<a@b>", "a@b"), or None."""
    if not isinstance(value, str):
        return None
    address = value.rpartition(";")[2].strip().strip("<>").strip()
    return address if "@" in address and " " not in address else None


def _addresses(values: list) -> list[str]:
    pieces = (p.strip().strip("<>") for v in values for p in str(v).split(","))
    return list(dict.fromkeys(p for p in pieces if "@" in p and " " not in p))


def _unfold(value: object) -> str:
    return " ".join(str(value).split())


def _clip(value: object) -> str | None:
    return _unfold(value)[:MAX_DIAGNOSTIC] or None if value else None
