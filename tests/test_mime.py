"""MIME building: parse what would go on the wire and check every header, body and byte."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from common.models import Message
from dispatcher.mime import BuildError, Part, build
from tests.support.factories import T0, message

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
PDF = b"%PDF-1.4\n" + bytes(range(255, -1, -1)) * 3


MID = "<0123456789abcdef@example.com>"  # the Message-ID intake would have stored


def model(**fields) -> Message:
    return Message.model_validate({**message("msg-1", body="Plain body\n"), **fields})


def parse(data: bytes):
    return BytesParser(policy=policy.default).parsebytes(data)


def text(part) -> str:
    """A text part's content with the wire's CRLF line ends turned back into LF."""
    return part.get_content().replace("\r\n", "\n")


def test_plain_message_headers_and_envelope():
    fields = {
        "cc": "Cc Person <cc@example.com>",
        "bcc": ["hidden@example.com"],
        "reply_to": "replies@example.com",
        "return_path": "bounces@example.com",
        "headers": {"X-Campaign": "spring", "Subject": "ignored?"},
    }
    env = build(model(**fields), [], T0, MID)
    msg = parse(env.data)
    assert env.sender == "bounces@example.com"
    assert env.recipients == ["rcpt@example.com", "cc@example.com", "hidden@example.com"]
    assert msg["From"] == "sender@example.com" and msg["To"] == "rcpt@example.com"
    assert msg["Cc"] == "Cc Person <cc@example.com>" and msg["Reply-To"] == "replies@example.com"
    assert "Bcc" not in msg and b"hidden@example.com" not in env.data
    assert msg["X-Campaign"] == "spring"
    assert msg["Subject"] == "ignored?"  # a custom header replaces the builder's
    assert msg["Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    assert msg["Message-ID"] == MID
    assert msg.get_content_type() == "text/plain" and text(msg) == "Plain body\n"
    assert b"\r\n" in env.data and b"\n" not in env.data.replace(b"\r\n", b"")


def test_message_id_is_the_one_given_whatever_the_payload_says():
    # intake chose it (the client's message_id included) and stored it: mime only writes it
    for parts in ([], [Part("a.txt", b"x")]):
        env = build(model(message_id="<abc@app.example>"), parts, T0, MID)
        assert parse(env.data)["Message-ID"] == MID


def test_non_ascii_subject_names_and_body_are_encoded():
    env = build(model(**{"from": "Zoë Ågren <z@example.com>", "to": "Jürgen <j@example.com>",
                         "subject": "Grüße – ünïcödé ✓ " + "long " * 20,
                         "body": "Привет, мир! ✓\n" + "ä" * 300 + "\n"}), [], T0, MID)  # fmt: skip
    assert env.data.isascii()  # 7-bit clean: RFC 2047 headers, QP/base64 body
    assert all(len(line) <= 998 for line in env.data.split(b"\r\n"))
    msg = parse(env.data)
    assert msg["Subject"] == "Grüße – ünïcödé ✓ " + "long " * 20
    assert msg["From"].addresses[0].display_name == "Zoë Ågren"
    assert msg["To"].addresses[0].display_name == "Jürgen"
    assert text(msg) == "Привет, мир! ✓\n" + "ä" * 300 + "\n"


def test_from_name_overrides_display_name():
    msg = parse(
        build(model(**{"from": "Old <s@example.com>", "from_name": "New Name"}), [], T0, MID).data
    )
    assert msg["From"] == "New Name <s@example.com>"


@pytest.mark.parametrize("flags", [{"content_type": "html"}, {"html": True}])
def test_html_body(flags):
    msg = parse(build(model(body="<p>Hi</p>", **flags), [], T0, MID).data)
    assert msg.get_content_type() == "text/html" and text(msg) == "<p>Hi</p>\n"


def test_attachments_and_inline_parts():
    parts = [
        Part("logo.png", PNG, None, "logo@app"),
        Part("report.pdf", PDF),
        Part("data.bin", b"\x00\x01", "application/x-custom"),
        Part("résumé.txt", "naïve\n".encode()),
    ]
    env = build(model(body='<img src="cid:logo@app">', html=True), parts, T0, MID)
    msg = parse(env.data)
    assert msg.get_content_type() == "multipart/mixed"
    related, *attached = msg.iter_parts()
    assert related.get_content_type() == "multipart/related"
    html, inline = related.iter_parts()
    assert text(html) == '<img src="cid:logo@app">\n'
    assert (inline.get_content_type(), inline["Content-ID"]) == ("image/png", "<logo@app>")
    assert inline.get_content_disposition() == "inline" and inline.get_content() == PNG
    got = {p.get_filename(): (p.get_content_type(), p.get_payload(decode=True)) for p in attached}
    assert got == {
        "report.pdf": ("application/pdf", PDF),
        "data.bin": ("application/x-custom", b"\x00\x01"),
        "résumé.txt": ("text/plain", "naïve\n".encode()),
    }
    assert all(p.get_content_disposition() == "attachment" for p in attached)


def test_attachments_without_inline_parts_are_mixed():
    msg = parse(build(model(), [Part("a.csv", b"x,y\n1,2\n")], T0, MID).data)
    body, csv = msg.iter_parts()
    assert text(body) == "Plain body\n"
    assert (csv.get_content_type(), csv.get_payload(decode=True)) == ("text/csv", b"x,y\n1,2\n")


def test_non_ascii_envelope_address_is_refused():
    with pytest.raises(BuildError, match="SMTPUTF8"):
        build(model(to="jösé@example.com"), [], T0, MID)


def test_leading_dots_survive_in_the_body():
    body = ".hidden line\n..two dots\n.\n"
    assert text(parse(build(model(body=body), [], T0, MID).data)) == body


EQUIVALENT = [
    {},
    {"html": True, "body": "<p>" + "word " * 100 + "</p>\n"},  # long lines, still 7bit
    {"body": "x" * 1500 + "\n"},  # beyond 998: quoted-printable
    {"body": "Grüße, café ✓\r\nline two  \r\n\ttab\n"},  # non-ASCII, CRLF, trailing spaces
    {"body": ""},
    {"body": ".\n..\nend"},
    {"from_name": "O'Brien, Pat", "cc": ["a@example.com", "B <b@example.com>"]},
    {
        "reply_to": "r@example.com",
        "message_id": "id@app",
        "headers": {"X-A": "1", "Date": "Mon, 01 Jan 2024 00:00:00 +0000"},
    },
    {"to": "a@example.com, b@example.com", "content_type": "html", "body": "<b>hi</b>"},
    {"from_name": "Zoë"},  # formataddr writes the RFC 2047 word itself
]


@pytest.mark.parametrize("fields", EQUIVALENT)
def test_direct_path_matches_the_email_package(fields):
    from dispatcher.mime import Parsed, _render, _render_simple

    msg = model(**fields)
    parsed = Parsed.of(msg)
    direct, reference = _render_simple(msg, parsed, T0, MID), _render(msg, parsed, [], T0, MID)
    assert direct is not None  # these all take the direct path
    fast, slow = parse(direct), parse(reference)
    skip = "content-transfer-encoding"  # 7bit vs quoted-printable may differ; content may not
    assert sorted((k, str(v)) for k, v in fast.items() if k.lower() != skip) == sorted(
        (k, str(v)) for k, v in slow.items() if k.lower() != skip
    )
    assert text(fast) == text(slow)
    assert all(len(line) <= 998 for line in direct.split(b"\r\n")) and direct.isascii()


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Grüße"},
        {"subject": "long " * 20},
        {"headers": {"X-Note": "ünïcode"}},
    ],  # fmt: skip
)
def test_headers_needing_encoding_or_folding_take_the_email_package(fields):
    from dispatcher.mime import Parsed, _render_simple

    msg = model(**fields)
    assert _render_simple(msg, Parsed.of(msg), T0, MID) is None
