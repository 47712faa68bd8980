"""Bad input of issue 2, each on its own: a clear 4xx, never a 500, nothing stored."""

from __future__ import annotations

import io
import json

import pytest

from tests.support.factories import message
from web.app import create_app

TOKEN = "t0ken"
AUTH = {"X-API-Token": TOKEN}
URL = "/commands/add-messages"


def without(field: str) -> dict:
    item = message()
    del item[field]
    return item


@pytest.fixture
def client(make_config):
    app = create_app(
        make_config(
            api_token=TOKEN, smtp_host="127.0.0.1", smtp_port=2525, max_request_bytes=64 * 1024
        )
    )
    return app.test_client()


@pytest.fixture
def stored(conn):
    """() -> number of rows in messages and attempts (must stay 0 after bad input)."""

    def count() -> int:
        return sum(
            conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]
            for table in ("messages", "attempts")
        )

    return count


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert response.json["ok"] is False
    assert isinstance(response.json["error"], str) and response.json["error"].endswith(".")
    return response.json


# -- whole request ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, expected",
    [
        (b"not json", "not valid JSON"),
        (b"", "empty"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 50_000, "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
        (b"{}", "'messages' must be a list"),
        (b'{"messages": "m1"}', "'messages' must be a list"),
        (b'{"messages": {"id": "m1"}}', "'messages' must be a list"),
        (b'{"messages": [], "default_priority": "urgent"}', "default_priority"),
    ],
)
def test_bad_request_body_is_400(client, stored, data, expected):
    response = client.post(URL, data=data, headers=AUTH, content_type="application/json")
    assert expected in assert_error(response, 400)["error"]
    assert stored() == 0


def test_exactly_1000_messages_are_accepted(client, stored):
    app = create_app(client.application.config["ASYNCMAIL"], max_request_bytes=1 << 20)
    items = [message(f"m{i}") for i in range(1000)]
    response = app.test_client().post(URL, json={"messages": items}, headers=AUTH)
    assert response.json == {"ok": True, "queued": 1000, "rejected": []}
    assert stored() == 1000


def test_more_than_1000_messages_is_400(client, stored):
    items = [message(f"m{i}") for i in range(1001)]
    # the whole request stays under this app's limit only if it is sent compactly
    app = create_app(client.application.config["ASYNCMAIL"], max_request_bytes=1 << 20)
    response = app.test_client().post(URL, json={"messages": items}, headers=AUTH)
    assert "At most 1000" in assert_error(response, 400)["error"]
    assert stored() == 0


def test_body_over_the_limit_is_413(client, stored):
    response = client.post(URL, json={"messages": [message(body="x" * 70_000)]}, headers=AUTH)
    assert "max_request_bytes" in assert_error(response, 413)["error"]
    assert stored() == 0


def test_streamed_body_over_the_limit_is_413(client, stored):
    body = b'{"messages": [{"id": "m", "body": "' + b"x" * 100_000 + b'"}]}'
    # what gunicorn passes for a chunked body: no usable length, a terminated stream
    environ = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    response = client.post(
        URL, input_stream=io.BytesIO(body), headers=AUTH, environ_overrides=environ
    )
    assert_error(response, 413)
    assert stored() == 0


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
def test_limit_is_exact(client, streamed):
    limit = client.application.config["ASYNCMAIL"].max_request_bytes
    body = json.dumps({"messages": [message()]}).encode()

    def send(size: int):
        data = body + b" " * (size - len(body))
        if not streamed:
            return client.post(URL, data=data, headers=AUTH)
        environ = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
        return client.post(
            URL, input_stream=io.BytesIO(data), headers=AUTH, environ_overrides=environ
        )

    assert send(limit).status_code == 200
    assert send(limit + 1).status_code == 413


def test_every_item_invalid_is_400_with_rejected(client, stored):
    response = client.post(
        URL, json={"messages": [without("to"), message("m2", to="x")]}, headers=AUTH
    )
    body = assert_error(response, 400)
    assert body["queued"] == 0
    assert [r["id"] for r in body["rejected"]] == ["m1", "m2"]
    assert stored() == 0


# -- each item on its own --------------------------------------------------------------------
BAD_ITEMS = {
    "missing id": (without("id"), "missing required field 'id'"),
    "missing from": (without("from"), "missing required field 'from'"),
    "missing to": (without("to"), "missing required field 'to'"),
    "missing subject": (without("subject"), "missing required field 'subject'"),
    "missing body": (without("body"), "missing required field 'body'"),
    "empty id": (message(""), "'id' must not be empty"),
    "empty subject": (message(subject="  "), "'subject' must not be empty"),
    "empty to": (message(to=[]), "'to' must name at least one recipient"),
    "to with two addresses and no comma": (message(to="a@b.org c@d.org"), "not an email"),
    "id too long": (message("x" * 256), "'id'"),
    "id with newline": (message("a\nb"), "'id' must be printable"),
    "malformed to": (message(to="alice-at-example.org"), "is not an email address"),
    "malformed in to list": (message(to=["a@b.org", "bad@"]), "is not an email address"),
    "malformed from": (message(**{"from": "shop"}), "'from'"),
    "two from addresses": (message(**{"from": "a@b.org, c@d.org"}), "exactly one"),
    "malformed cc": (message(cc="nope"), "'cc'"),
    "CR/LF in subject": (message(subject="Hi\r\nBcc: victim@x.org"), "CR or LF"),
    "LF in subject": (message(subject="Hi\nthere"), "CR or LF"),
    "CR/LF in header": (message(headers={"X-A": "v\r\nBcc: v@x.org"}), "CR or LF"),
    "bad header name": (message(headers={"X A:": "v"}), "header name"),
    "CR/LF in from": (message(**{"from": "a@b.org\r\nBcc: v@x.org"}), "CR or LF"),
    "CR/LF in to": (message(to="a@b.org\r\nBcc: v@x.org"), "CR or LF"),
    "CR/LF in attachment filename": (
        message(attachments=[{"filename": "a\r\n.txt", "content": "aGk="}]),
        "CR or LF",
    ),
    "unknown account": (message(account_id="ghost"), "unknown account_id 'ghost'"),
    "priority 7": (message(priority=7), "'priority'"),
    "priority urgent": (message(priority="urgent"), "'priority'"),
    "priority true": (message(priority=True), "'priority'"),
    "deferred_ts tomorrow": (message(deferred_ts="tomorrow"), "'deferred_ts'"),
    "deferred_ts negative": (message(deferred_ts=-5), "'deferred_ts'"),
    "deferred_ts huge": (message(deferred_ts=10**30), "'deferred_ts'"),
    "attachment without source": (
        message(attachments=[{"filename": "a.txt"}]),
        "exactly one source",
    ),
    "attachment with two sources": (
        message(attachments=[{"filename": "a", "content": "aGk=", "url": "https://x.org/a"}]),
        "exactly one source",
    ),
    "bad base64": (message(attachments=[{"filename": "a", "content": "%%%not*base64"}]), "base64"),
    "attachment url not http": (
        message(attachments=[{"filename": "a", "url": "file:///etc/passwd"}]),
        "http",
    ),
    "attachment without filename": (message(attachments=[{"content": "aGk="}]), "filename"),
    "subject not a string": (message(subject=5), "'subject' must be a string"),
    "to not a string": (message(to=5), "'to'"),
    "headers not an object": (message(headers=["X-A: b"]), "'headers'"),
    "content_type pdf": (message(content_type="pdf"), "'content_type'"),
    "body lone surrogate": (message(body="\ud800"), "not valid Unicode"),
    "NUL in subject": (message(subject="a\x00b"), "NUL"),
    "item not an object": ("just a string", "JSON object"),
    "deeply nested unknown field": (
        message(extra=json.loads("[" * 250 + "]" * 250)),
        "more than 32 levels deep",
    ),
    "S3 attachment without S3 configured": (
        message(attachments=[{"filename": "a", "s3": {"bucket": "b", "key": "k"}}]),
        "S3 attachments are not enabled",
    ),
    "more recipients than a message may have": (
        message(bcc=[f"r{i}@example.com" for i in range(1001)]),
        "at most 1000",
    ),
}

# Characters the MIME builder or an SMTP server would choke on, in every header-bound field.
UNSENDABLE = {"U+2028": "\u2028", "U+2029": "\u2029", "U+0085": "\x85", "U+000B": "\x0b",
              "U+000C": "\x0c", "U+001C": "\x1c", "U+001B": "\x1b", "U+007F": "\x7f",
              "U+009B": "\x9b"}  # fmt: skip
HEADER_FIELDS = {
    "subject": lambda c: message(subject=f"a{c}b"),
    "header value": lambda c: message(headers={"X-A": f"a{c}b"}),
    "message_id": lambda c: {**message(), "message_id": f"<a{c}b@x.org>"},
    "from_name": lambda c: message(from_name=f"Shop{c}"),
    "display name in to": lambda c: message(to=f"Bob{c} <b@x.org>"),
    "filename": lambda c: message(attachments=[{"filename": f"a{c}.txt", "content": "aGk="}]),
    "content_id": lambda c: message(
        attachments=[{"filename": "a.png", "content": "aGk=", "content_id": f"c{c}1"}]
    ),
}


@pytest.mark.parametrize("code, char", UNSENDABLE.items(), ids=UNSENDABLE.keys())
def test_characters_no_header_can_carry_are_refused_in_every_field(client, stored, code, char):
    items = [{**make(char), "id": field} for field, make in HEADER_FIELDS.items()]
    body = assert_error(client.post(URL, json={"messages": items}, headers=AUTH), 400)
    reasons = {r["id"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == set(HEADER_FIELDS)
    assert all(f"the character {code}" in reason for reason in reasons.values()), reasons
    assert stored() == 0


@pytest.mark.parametrize("item, reason", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_bad_item_is_rejected_with_a_reason(client, stored, item, reason):
    response = client.post(URL, json={"messages": [item]}, headers=AUTH)
    body = assert_error(response, 400)
    assert len(body["rejected"]) == 1
    assert reason in body["rejected"][0]["reason"]
    assert stored() == 0


@pytest.mark.parametrize("item, reason", BAD_ITEMS.values(), ids=BAD_ITEMS.keys())
def test_bad_item_does_not_stop_a_good_one(client, stored, item, reason):
    """The same items beside a good one: it is queued, they are rejected with the reason."""
    response = client.post(URL, json={"messages": [message("good"), item]}, headers=AUTH)
    assert response.status_code == 200
    assert response.json["queued"] == 1
    assert reason in response.json["rejected"][0]["reason"]
    assert stored() == 1


def test_same_id_twice_in_one_batch_rejects_the_second(client, conn):
    response = client.post(
        URL,
        json={"messages": [message("dup", subject="one"), message("dup", subject="two")]},
        headers=AUTH,
    )
    assert response.json["queued"] == 1
    assert response.json["rejected"] == [{"id": "dup", "reason": "duplicate id in this batch"}]
    payload = conn.execute("SELECT payload FROM messages WHERE id = 'dup'").fetchone()["payload"]
    assert '"subject":"one"' in payload


def test_no_account_id_without_default_account(make_config, stored):
    client = create_app(make_config(api_token=TOKEN)).test_client()
    response = client.post(URL, json={"messages": [message()]}, headers=AUTH)
    body = assert_error(response, 400)
    assert "no default [smtp] account" in body["rejected"][0]["reason"]
    assert stored() == 0


@pytest.mark.parametrize("priority, expected", [(0, 0), ("3", 3), ("HIGH", 1), ("medium", 2)])
def test_priority_spellings(client, conn, priority, expected):
    client.post(URL, json={"messages": [message(priority=priority)]}, headers=AUTH)
    assert conn.execute("SELECT priority FROM messages").fetchone()["priority"] == expected


@pytest.mark.parametrize(
    "path, body",
    [
        ("/commands/delete-messages", b"{"),
        ("/commands/cleanup-messages", b"[]"),
        ("/account", b"nope"),
        ("/account", b'{"id": "a", "host": "h", "port": 99999}'),
    ],
)
def test_other_endpoints_answer_bad_json_with_400(client, path, body):
    response = client.post(path, data=body, headers=AUTH)
    assert_error(response, 400)
