"""No api_token: loopback clients are served, but never a web page in a local browser.

A page cannot choose its request's Host or Origin, and cannot send a JSON body to another
origin without asking first (CORS preflight, which the API never grants).  So each of these
is refused from the headers alone; with a token configured nothing changes.
"""

from __future__ import annotations

import pytest

from tests.support.factories import message
from web.app import create_app

BODY = {"messages": [message("m1")]}


@pytest.fixture
def client(make_config):
    return create_app(make_config(smtp_host="127.0.0.1", smtp_port=2525)).test_client()


def enqueue(client, **kwargs):
    return client.post("/commands/add-messages", **kwargs)


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"])
def test_local_names_are_served(client, host):
    response = enqueue(client, json=BODY, headers={"Host": host})
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "10.0.0.1"])
def test_a_host_that_is_not_local_is_refused(client, host):
    """DNS rebinding: the page's own name resolves to 127.0.0.1, and is sent as Host."""
    response = enqueue(client, json=BODY, headers={"Host": host})
    assert response.status_code == 403
    assert "api_token" in response.json["error"]
    assert client.get("/status", headers={"Host": host}).status_code == 403


def test_the_configured_host_name_is_served(make_config):
    client = create_app(make_config(host="relay.internal")).test_client()
    assert client.get("/status", headers={"Host": "relay.internal:8000"}).status_code == 200


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "https://evil.test:8000"])
def test_an_origin_that_is_not_local_is_refused(client, origin):
    response = enqueue(client, json=BODY, headers={"Origin": origin})
    assert response.status_code == 403
    assert "Origin" in response.json["error"]
    assert client.post("/commands/suspend", headers={"Origin": origin}).status_code == 403


def test_a_local_origin_is_served(client):
    response = enqueue(client, json=BODY, headers={"Origin": "http://localhost:8000"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_json_is_refused(client, content_type):
    """What a form or a no-preflight fetch() can send; a JSON body needs a preflight."""
    response = enqueue(client, data=b'{"messages": []}', headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json["error"]


def test_a_body_without_content_type_is_refused(client):
    assert enqueue(client, data=b'{"messages": []}').status_code == 415


def test_json_with_a_charset_and_bodiless_posts_are_served(client):
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert enqueue(client, data=b'{"messages": []}', headers=headers).status_code == 200
    assert client.post("/commands/run-now").status_code == 200


def test_health_stays_open(client):
    assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 200


def test_with_a_token_nothing_changes_for_clients(make_config):
    client = create_app(make_config(api_token="t", smtp_host="127.0.0.1")).test_client()
    headers = {"X-API-Token": "t", "Host": "mail.example.com", "Origin": "https://app.example"}
    response = enqueue(client, data=b'{"messages": []}', headers=headers)
    assert response.status_code == 200
    response = enqueue(client, data=b"{}", headers={**headers, "Content-Type": "text/plain"})
    assert response.status_code == 400  # read as JSON, as before: 'messages' is missing
