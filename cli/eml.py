"""Message payloads for ``asyncmail send``: from command-line flags or from an ``.eml`` file.

Both produce the same dict a client would POST to add-messages; validation happens later, in
``common.intake.accept_batch``, so the CLI and the API reject the same things.
"""

from __future__ import annotations

import base64
import email
import email.policy
import mimetypes
import sys
from email.message import EmailMessage
from pathlib import Path

# Headers of an .eml that become payload fields, or that the dispatcher writes itself.
STRUCTURAL_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "message-id",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "return-path",
    "received",
    "delivered-to",
    "x-original-to",
}
# Other headers worth carrying over: client tags, threading and list management.
KEPT_HEADER_PREFIXES = ("x-", "list-")
KEPT_HEADERS = {"in-reply-to", "references", "precedence", "auto-submitted"}


class PayloadError(ValueError):
    """The input cannot be turned into a message (unreadable file, no id); a usage error."""


def read_text(path: str) -> str:
    """A file's text, or standard input for ``-``."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"cannot read {path}: {exc}") from None


def attachment_from_file(path: str) -> dict:
    """An inline attachment (base64) from a local file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PayloadError(f"cannot read attachment {path}: {exc}") from None
    mime_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return {
        "filename": Path(path).name,
        "content": base64.b64encode(data).decode("ascii"),
        "mime_type": mime_type,
    }


def _split_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise PayloadError(f"--header {text!r} must look like 'Name: value'")
    return name.strip(), value.strip()


def payload_from_flags(args) -> dict:
    """The message the ``send`` flags describe; absent flags stay absent."""
    body = args.body
    if args.body_file is not None:
        body = read_text(args.body_file)
    payload = {
        "id": args.id,
        "account_id": args.account,
        "from": args.sender,
        "from_name": args.from_name,
        "to": args.to,
        "cc": args.cc,
        "bcc": args.bcc,
        "reply_to": args.reply_to,
        "return_path": args.return_path,
        "subject": args.subject,
        "body": body,
        "content_type": "html" if args.html else None,
        "message_id": args.message_id,
        "priority": args.priority,
        "deferred_ts": args.deferred_ts,
    }
    if args.header:
        payload["headers"] = dict(_split_header(h) for h in args.header)
    if args.attach:
        payload["attachments"] = [attachment_from_file(p) for p in args.attach]
    return {k: v for k, v in payload.items() if v is not None}


def _kept_headers(msg: EmailMessage) -> dict[str, str]:
    kept = {}
    for name, value in msg.items():
        lowered = name.lower()
        if lowered in STRUCTURAL_HEADERS:
            continue
        if lowered in KEPT_HEADERS or lowered.startswith(KEPT_HEADER_PREFIXES):
            kept[name] = str(value)
    return kept


def _attachments(msg: EmailMessage, body_part) -> list[dict]:
    """Every leaf part except the chosen body and its text alternatives."""
    found = []
    for part in msg.walk():
        if part.is_multipart() or part is body_part:
            continue
        inline_text = part.get_content_maintype() == "text" and part.get("Content-ID") is None
        if inline_text and part.get_content_disposition() != "attachment":
            continue  # the other alternative of the body (plain beside html)
        item = {
            "filename": part.get_filename() or "attachment",
            "content": base64.b64encode(part.get_payload(decode=True) or b"").decode("ascii"),
            "mime_type": part.get_content_type(),
        }
        if part.get("Content-ID"):
            item["content_id"] = str(part["Content-ID"]).strip().strip("<>")
        found.append(item)
    return found


def payload_from_eml(data: bytes, message_id: str | None = None) -> dict:
    """A message payload from a whole RFC 5322 message; the id defaults to its Message-ID."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    original_id = str(msg["Message-ID"]).strip() if msg["Message-ID"] else None
    message_id = message_id or (original_id.strip("<>") if original_id else None)
    if not message_id:
        raise PayloadError("the .eml has no Message-ID header; pass --id")
    body_part = msg.get_body(preferencelist=("html", "plain"))
    payload = {
        "id": message_id,
        "from": str(msg["From"] or ""),
        "to": str(msg["To"] or ""),
        "cc": str(msg["Cc"]) if msg["Cc"] else None,
        "bcc": str(msg["Bcc"]) if msg["Bcc"] else None,
        "reply_to": str(msg["Reply-To"]) if msg["Reply-To"] else None,
        "subject": str(msg["Subject"] or ""),
        "body": body_part.get_content() if body_part is not None else "",
        "content_type": "html"
        if body_part is not None and body_part.get_content_subtype() == "html"
        else "plain",
        "message_id": original_id,
        "headers": _kept_headers(msg) or None,
        "attachments": _attachments(msg, body_part) or None,
    }
    return {k: v for k, v in payload.items() if v is not None}
