"""logfmt lines: one line per event whatever the values hold; URLs without secrets; the
API's access log."""

from __future__ import annotations

import io
import logging

import pytest

from common.logs import LogfmtFormatter, fields, redact_url
from web.app import create_app


@pytest.mark.parametrize(
    "value, text",
    [
        ("plain", "plain"),
        ("", '""'),
        (None, '""'),
        (42, "42"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("cr\rlf", '"cr\\rlf"'),
        ("back\\slash", '"back\\\\slash"'),
        ("sep\u2028arator", '"sep\\u2028arator"'),
        ("nel\x85", '"nel\\u0085"'),
        ("tab\there", '"tab\\there"'),
        ("caf\u00e9", "caf\u00e9"),
    ],
)
def test_values_are_quoted_and_escaped(value, text):
    assert fields(k=value) == f"k={text}"


def test_keys_are_kept_to_safe_characters():
    assert fields(**{"bad key=": 1}) == "bad_key_=1"


def record(logger_name: str, message, args=(), exc_info=None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter("dispatcher-00"))
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.error(message, *args, exc_info=exc_info)
    return stream.getvalue()


def test_an_event_is_one_line_with_its_head():
    out = record("t.head", fields(event="sent", detail="250 ok\r\nsmuggled=1"))
    assert out.count("\n") == 1
    assert " level=error process=dispatcher-00 logger=t.head event=sent " in out
    assert 'detail="250 ok\\r\\nsmuggled=1"' in out


def test_a_library_message_becomes_msg_and_a_traceback_one_value():
    try:
        raise ValueError("bad\nthing")
    except ValueError as exc:
        out = record("t.lib", "pool %s is full", ("x y",), exc_info=exc)
    assert out.count("\n") == 1
    assert 'msg="pool x y is full"' in out
    assert ' exc="Traceback (most recent call last):\\n' in out


def test_redact_url_drops_credentials_query_and_fragment():
    assert redact_url("https://u:pw@h.example:8443/p/a?token=x#f") == "https://h.example:8443/p/a"
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80/x"


# -- the API's access log ---------------------------------------------------------------------
def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "web.access"]


def test_access_log_is_one_logfmt_line_per_request_without_secrets(make_config, caplog):
    client = create_app(make_config(api_token="tok-secret", access_log=True)).test_client()
    with caplog.at_level(logging.INFO):
        client.get("/health?token=query-secret")
        client.get("/status", headers={"X-API-Token": "tok-secret"})
        client.get("/status", headers={"X-API-Token": "wrong-secret"})
    lines = access_lines(caplog)
    assert len(lines) == 3
    assert lines[0].startswith("event=request method=GET path=/health status=200 bytes=")
    assert "status=401" in lines[2] and "remote=127.0.0.1" in lines[2]
    assert not any("secret" in line for line in lines)


def test_access_log_is_off_by_default(make_config, caplog):
    client = create_app(make_config()).test_client()
    with caplog.at_level(logging.INFO):
        client.get("/health")
    assert access_lines(caplog) == []
