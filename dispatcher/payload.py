"""A stored message as the dispatcher reads it back: the payload's fields, not re-validated.

Intake validated every payload with ``common.models.Message`` before storing it exactly as
the client sent it, and that model converts none of the fields read here (strict types,
validators that return their input), so the stored JSON already holds the values the model
would give.  Reading it without pydantic keeps pydantic out of the dispatcher, ~11 MiB of
resident memory per process (measured with ``make bench``).  The attribute names are the
model's, so ``mime.build`` takes a ``Message`` as well (tests build one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str


@dataclass(frozen=True)
class Attachment:
    """One attachment spec: exactly one of ``content`` (base64), ``url`` or ``s3`` is set."""

    filename: str
    content: str | None = None
    url: str | None = None
    s3: S3Object | None = None
    mime_type: str | None = None
    content_id: str | None = None

    @classmethod
    def of(cls, item: dict[str, Any]) -> Attachment:
        """The attachment of a stored payload's ``attachments`` list."""
        s3 = item.get("s3")
        return cls(item["filename"], item.get("content"), item.get("url"),
                   None if s3 is None else S3Object(s3["bucket"], s3["key"]),
                   item.get("mime_type"), item.get("content_id"))  # fmt: skip


@dataclass(frozen=True)
class Message:
    """The fields of a stored payload that the message is built from."""

    id: str
    from_: str
    to: str | list[str]
    subject: str
    body: str
    from_name: str | None = None
    cc: str | list[str] | None = None
    bcc: str | list[str] | None = None
    reply_to: str | list[str] | None = None
    return_path: str | None = None
    content_type: str | None = None
    html: bool | None = None
    headers: dict[str, str] | None = None
    attachments: list[Attachment] | None = None

    @property
    def is_html(self) -> bool:
        return self.content_type == "html" or (self.content_type is None and bool(self.html))


# message_id is not read here: intake stored the Message-ID in its own column
OPTIONAL = ("from_name", "cc", "bcc", "reply_to", "return_path", "content_type", "html",
            "headers")  # fmt: skip


def load(payload: str) -> Message:
    """The message of a stored payload (JSON text)."""
    item = json.loads(payload)
    attachments = item.get("attachments")
    return Message(
        id=item["id"],
        # the model takes "from" or its field name "from_" (populate_by_name); "from" first
        from_=item["from"] if "from" in item else item["from_"],
        to=item["to"],
        subject=item["subject"],
        body=item["body"],
        attachments=None if attachments is None else [Attachment.of(a) for a in attachments],
        **{name: item.get(name) for name in OPTIONAL},
    )
