"""Fuzzing: no input is a 500, and every answer is one the document describes.

schemathesis generates requests for each operation of the real gunicorn's /openapi.json
(valid and invalid bodies, queries and paths) and checks each answer against the document;
hypothesis throws arbitrary JSON at the message model, one message of a batch at a time.
Both are bounded (``MAX_EXAMPLES``) so the whole file takes well under a minute.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from common.models import Message
from tests.support.factories import message
from tests.support.openapi import check
from tests.support.web import gunicorn_server
from web.app import create_app
from web.openapi import ROUTES

TOKEN = "fuzz-token"
AUTH = {"X-API-Token": TOKEN}
MAX_EXAMPLES = 40  # per operation (schemathesis) and for the message model (hypothesis x5)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The real gunicorn (one worker) with a token and a default SMTP account."""
    var_dir = tmp_path_factory.mktemp("fuzz") / "var"
    var_dir.mkdir()
    with gunicorn_server(var_dir, api_token=TOKEN, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(api.base + "/openapi.json", headers=AUTH)


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES, ids=[route.operation_id for route in ROUTES])
def test_every_operation_answers_as_documented(api, api_schema, route):
    operation = api_schema[route.path][route.method]

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def answers_as_documented(case):
        case.call_and_validate(base_url=api.base, headers=AUTH, checks=CHECKS)

    answers_as_documented()


# -- the message model -------------------------------------------------------------------------
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**330), max_value=10**330)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["a@b.org", "A <a@b.org>", "x\r\nBcc: e@f.org", "", " ", "high", "html"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
ATTACHMENT = st.dictionaries(
    st.sampled_from(["filename", "content", "url", "s3", "mime_type", "content_id"]), JSON
)
FIELDS = [name if info.alias is None else info.alias for name, info in Message.model_fields.items()]
ITEMS = st.one_of(
    JSON,  # anything at all
    st.builds(  # a valid message with some fields replaced
        lambda changes: {**message("fuzzed"), **changes},
        st.dictionaries(
            st.sampled_from(FIELDS), JSON | st.lists(ATTACHMENT, max_size=2), max_size=4
        ),
    ),
)


@pytest.fixture
def client(make_config):
    config = make_config(api_token=TOKEN, smtp_host="127.0.0.1", smtp_port=2525)
    return create_app(config).test_client()


@given(item=ITEMS)
@settings(max_examples=MAX_EXAMPLES * 5, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_any_message_is_queued_or_rejected_with_a_reason(client, item):
    assume(not isinstance(item, dict) or item.get("id") != "good")
    response = client.post(
        "/commands/add-messages", json={"messages": [item, message("good")]}, headers=AUTH
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    check(response, "POST", "/commands/add-messages")
    answer = response.json
    assert all(r["id"] != "good" and r["reason"] for r in answer["rejected"])
    assert answer["queued"] == 2 - len(answer["rejected"])
    if answer["queued"] == 2:  # the fuzzed one was taken: it reads back as documented
        stored = client.get(f"/messages/{quote(item['id'], safe='')}", headers=AUTH)
        check(stored, "GET", "/messages/{message_id}")
