"""The dispatcher's reading of a stored payload gives what the intake model gave."""

from __future__ import annotations

import json

import pytest

from common.models import Message, validate_message
from dispatcher import mime, payload

NOW = 1_700_000_000.0
BASE = {"id": "m1", "from": "a@b.org", "to": "c@d.org", "subject": "s", "body": "b"}
ITEMS = [
    BASE,
    {**BASE, "to": ["c@d.org", "\"Doe, J\" <j@d.org>"], "cc": "e@f.org", "bcc": ["g@h.org"],
     "reply_to": "r@b.org", "return_path": "bounce@b.org", "from_name": "Ann"},
    {**BASE, "content_type": "html", "html": False, "headers": {"X-Tag": "t"},
     "message_id": "<x@y>", "priority": "high", "deferred_ts": 1, "account_id": "acc"},
    {**BASE, "html": True, "unknown_field": {"kept": True}},
    {**{k: v for k, v in BASE.items() if k != "from"}, "from_": "Field Name <a@b.org>"},
    {**BASE, "from_": "ignored@b.org"},  # the alias wins over the field name
    {**BASE, "attachments": [
        {"filename": "a.txt", "content": "aGk=", "mime_type": "text/plain", "extra": 1},
        {"filename": "b.png", "url": "https://files.example/b.png", "content_id": "<b>"},
        {"filename": "c.pdf", "s3": {"bucket": "bk", "key": "k/c.pdf", "region": "x"}},
    ]},
]  # fmt: skip
FIELDS = [*payload.OPTIONAL, "id", "from_", "to", "subject", "body", "is_html"]
ATTACHMENT_FIELDS = ["filename", "content", "url", "mime_type", "content_id"]


def stored(item: dict) -> str:
    """The payload column as intake writes it."""
    model, kept, reason = validate_message(item)
    assert reason is None, reason
    return json.dumps(kept, ensure_ascii=False)


@pytest.mark.parametrize("item", ITEMS)
def test_stored_payload_reads_as_the_model(item):
    model, read = Message.model_validate(item), payload.load(stored(item))
    assert {f: getattr(read, f) for f in FIELDS} == {f: getattr(model, f) for f in FIELDS}
    pairs = zip(read.attachments or [], model.attachments or [], strict=True)
    for got, want in pairs:
        assert [getattr(got, f) for f in ATTACHMENT_FIELDS] == [
            getattr(want, f) for f in ATTACHMENT_FIELDS
        ]
        assert (got.s3 is None) == (want.s3 is None)
        if got.s3 is not None:
            assert (got.s3.bucket, got.s3.key) == (want.s3.bucket, want.s3.key)


@pytest.mark.parametrize("item", [i for i in ITEMS if "attachments" not in i])
def test_same_bytes_on_the_wire(item):
    """The message built from the stored payload is the one built from the model."""
    from_model = mime.build(Message.model_validate(item), [], NOW, "<m@example.com>")
    assert mime.build(payload.load(stored(item)), [], NOW, "<m@example.com>") == from_model
