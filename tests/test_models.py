"""Payload models without HTTP: addresses, priorities, attachments, accounts, stored payload."""

from __future__ import annotations

import pytest

from common.addresses import parse_address_list, split_addresses
from common.enums import Priority
from common.models import Account, Attachment, validate_message


def item(**fields) -> dict:
    return {"id": "m", "from": "a@b.org", "to": "c@d.org", "subject": "s", "body": "b", **fields}


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("a@b.org, c@d.org", ["a@b.org", "c@d.org"]),
        ('"Doe, John" <j@x.org>, k@x.org', ['"Doe, John" <j@x.org>', "k@x.org"]),
        ('"a\\", b" <q@x.org>', ['"a\\", b" <q@x.org>']),
        ("a@b.org,, ,", ["a@b.org"]),
        ("", []),
    ],
)
def test_split_addresses(text, pieces):
    assert split_addresses(text) == pieces


def test_parse_address_list_accepts_names_lists_and_strings():
    assert parse_address_list(["Bob <bob@x.org>", "c@d.org, e@f.org"]) == [
        ("Bob", "bob@x.org"),
        ("", "c@d.org"),
        ("", "e@f.org"),
    ]


@pytest.mark.parametrize("bad", ["bob", "bob@", "@x.org", "a@b.org c@d.org", "Bob <>", "a@-x.org"])
def test_parse_address_list_refuses_non_addresses(bad):
    with pytest.raises(ValueError, match="not an email address"):
        parse_address_list(["ok@x.org", bad])


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0), (3, 3), ("immediate", 0), ("High", 1), (" low ", 3), ("2", 2)],
)
def test_parse_priority(value, expected):
    assert Priority.parse(value) == expected


@pytest.mark.parametrize("value", [4, -1, 7, "urgent", "", True, 1.0, None, "10"])
def test_parse_priority_refuses(value):
    with pytest.raises(ValueError):
        Priority.parse(value)


def test_stored_payload_is_the_input_with_unknown_fields_kept():
    sent = item(cc=["x@y.org"], html=True, extra={"nested": [1, 2]}, priority="low")
    model, payload, reason = validate_message(sent)
    assert reason is None
    assert payload == sent
    assert model.is_html and model.recipients() == ["c@d.org", "x@y.org"]
    assert model.resolved_priority(2) == 3


def test_content_type_wins_over_html_flag():
    model, _, _ = validate_message(item(content_type="plain", html=True))
    assert not model.is_html


def test_recipients_include_bcc():
    model, _, _ = validate_message(item(to="a@x.org", cc="b@x.org", bcc=["c@x.org", "d@x.org"]))
    assert model.recipients() == ["a@x.org", "b@x.org", "c@x.org", "d@x.org"]


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"id": 5}, "field 'id' has the wrong type"),
        ({"deferred_ts": float("nan")}, "'deferred_ts'"),
        ({"return_path": "a@b.org, c@d.org"}, "exactly one"),
        ({"headers": {"X-A": 1}}, "'headers.X-A' must be a string"),
        ({"attachments": [{"filename": "a", "s3": {"bucket": "b"}}]}, "attachments.0.s3.key"),
        ({"from_name": "Eve\r\nBcc: x@y.org"}, "CR or LF"),
        ({"message_id": "<id>\n"}, "CR or LF"),
        ({"custom": "\ud800"}, "not valid Unicode"),
    ],
)
def test_validate_message_reasons(fields, reason):
    model, payload, why = validate_message(item(**fields))
    assert model is None and payload is None
    assert reason in why


def test_attachment_sources():
    assert Attachment.model_validate({"filename": "a", "content": "aGk=\n"}).content
    assert Attachment.model_validate({"filename": "a", "url": "https://x.org/a.pdf"}).url
    s3 = Attachment.model_validate({"filename": "a", "s3": {"bucket": "b", "key": "k"}})
    assert s3.s3.key == "k"


def test_account_implicit_tls_follows_the_port():
    base = {"id": "a", "host": "h"}
    assert Account.model_validate({**base, "port": 465}).implicit_tls
    assert not Account.model_validate({**base, "port": 587}).implicit_tls
    assert not Account.model_validate({**base, "port": 465, "use_tls": False}).implicit_tls
    assert Account.model_validate({**base, "port": 2465, "use_tls": True}).implicit_tls


def test_account_reference_fields_are_accepted():
    account = Account.model_validate(
        {
            "id": "acme",
            "host": "smtp.acme.test",
            "port": 587,
            "user": "u",
            "password": "p",
            "use_tls": False,
            "ttl": 300,
            "limit_per_minute": 60,
            "limit_per_hour": 1000,
            "limit_per_day": 10000,
            "limit_behavior": "defer",
            "batch_size": 20,
        }
    )
    assert account.limit_per_day == 10000 and account.batch_size == 20
