"""Payload models without HTTP: addresses, priorities, attachments, accounts, stored payload,
and their published JSON schemas."""

from __future__ import annotations

import re

import jsonschema
import pytest
from pydantic import ValidationError

from common.addresses import parse_address_list, split_addresses
from common.enums import Priority
from common.models import Account, Attachment, Message, validate_message

EPOCH_REASON = "must be epoch seconds (a number between 0 and year 9999)"


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


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"priority": None}, "field 'priority' must be 0-3 or immediate/high/medium/low"),
        ({"priority": True}, "field 'priority' must be 0-3 or immediate/high/medium/low"),
        ({"priority": 1.0}, "field 'priority' must be 0-3 or immediate/high/medium/low"),
        ({"priority": "10"}, "field 'priority' must be 0-3 or immediate/high/medium/low"),
        ({"deferred_ts": None}, f"field 'deferred_ts' {EPOCH_REASON}"),
        ({"deferred_ts": True}, f"field 'deferred_ts' {EPOCH_REASON}"),
        ({"deferred_ts": "5"}, f"field 'deferred_ts' {EPOCH_REASON}"),
        ({"deferred_ts": float("inf")}, f"field 'deferred_ts' {EPOCH_REASON}"),
        ({"to": True}, "field 'to' must be an address string or a list of address strings"),
        (
            {"to": ["a@b.org", 1]},
            "field 'to' must be an address string or a list of address strings",
        ),
        ({"to": " , "}, "field 'to' must name at least one recipient"),
        ({"from": ["a@b.org"]}, "field 'from' must be a string"),
        ({"body": 5}, "field 'body' has the wrong type (input should be a valid string)"),
        ({"html": "yes"}, "field 'html' has the wrong type (input should be a valid boolean)"),
    ],
)
def test_strict_types_keep_their_reasons(fields, reason):
    """Booleans, numeric strings and explicit nulls are refused with the same sentence as ever."""
    assert validate_message(item(**fields))[2] == reason


def test_header_name_with_a_final_newline_is_refused():
    reason = validate_message(item(headers={"X-A\n": "v"}))[2]
    assert reason == "field 'headers' header name 'X-A\\n' is not a valid header field name"


def test_strict_numbers_keep_their_type():
    model, _, _ = validate_message(item(priority="2", deferred_ts=1700000000.5))
    assert model.priority == "2" and model.deferred_ts == 1700000000.5
    model, _, _ = validate_message(item(priority=2, deferred_ts=1700000000))
    assert type(model.priority) is int and type(model.deferred_ts) is int


# -- the published schema and the checks agree -------------------------------------------------
SAMPLES = [None, True, 0, 1, 3, 4, -1, 1.5, 65535, 65536, 86400, 86401, 10**9, 10**9 + 1, 10**30,
           "", " ", "x", "2", "high", "a@b.org", "Bob <b@x.org>", "a@b.org, c@d.org", "bob",
           "a\nb", "a\rb", "a\x00b", "x\n", "h/x", "h x", "x" * 255, "x" * 256, [], [1],
           ["a@b.org"], ["a@b.org\n"], {}, {"X-A": "v"}, {"X A": "v"}, {"X-A\n": "v"},
           {"X-A": "v\n"}, {"X-A": 1}, "plain", "html", "defer", "text/plain", "text",
           "https://x.org/a", "ftp://x.org", "aGk=", "%%%", {"bucket": "b", "key": "k"},
           {"bucket": "b"}, "a\u2028b", "a\x0bb", "a\x85b", "a\tb", "a\x7fb"]  # fmt: skip
BASES = {
    Message: {"id": "m", "from": "a@b.org", "to": "c@d.org", "subject": "s", "body": "b"},
    Attachment: {"filename": "f", "content": "aGk="},
    Account: {"id": "a", "host": "h", "port": 25},
}
# Checks JSON Schema cannot state: there the schema accepts more than the model.
SCHEMA_WEAKER = {
    Message: {"id", "from", "to", "cc", "bcc", "reply_to", "return_path", "subject", "priority"},
    Attachment: {"filename", "content", "url", "s3"},  # not blank, base64, exactly one source
    Account: {"use_tls", "starttls"},  # not both
}
MODEL_LAXER = {(Account, "timeout")}  # a lax float: also takes true and "30" (noted, kept)


def _ecma_pattern(validator, pattern, instance, schema):
    """JSON Schema patterns are ECMA-262, where $ is the end of the text (Python's $ also
    matches before a final newline)."""
    python = re.sub(r"(?<!\\)\$$", r"\\Z", pattern)
    if validator.is_type(instance, "string") and not re.search(python, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


def _fields(model) -> list[tuple[type, str]]:
    return [(model, info.alias or name) for name, info in model.model_fields.items()]


@pytest.mark.parametrize(
    "model, field", [*_fields(Message), *_fields(Attachment), *_fields(Account)], ids=str
)
def test_schema_and_model_agree(model, field):
    """The schema never refuses what the model takes, and refuses what it refuses where it can."""
    schema = EcmaValidator(model.model_json_schema())
    for value in SAMPLES:
        data = {**BASES[model], field: value}
        try:
            model.model_validate(data)
            taken = True
        except ValidationError:
            taken = False
        if taken and (model, field) not in MODEL_LAXER:
            assert schema.is_valid(data), f"the schema refuses {field}={value!r}"
        if not taken and field not in SCHEMA_WEAKER[model]:
            assert not schema.is_valid(data), f"the schema allows {field}={value!r}"
