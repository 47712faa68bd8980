"""/openapi.json: a valid OpenAPI 3 document naming every route and method the app serves."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from web.app import create_app
from web.openapi import openapi_document

IMPLICIT_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask for every route


@pytest.fixture
def app(make_config):
    return create_app(make_config(api_token="t"))


def test_document_is_valid_openapi():
    validate(openapi_document())


def test_every_route_and_method_is_documented(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in openapi_document()["paths"], path
        for method in rule.methods - IMPLICIT_METHODS:
            assert method.lower() in openapi_document()["paths"][path], f"{method} {path}"


def test_every_documented_operation_exists(app):
    served = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule): r.methods for r in app.url_map.iter_rules()
    }
    for path, item in openapi_document()["paths"].items():
        for method in item.keys() - {"parameters"}:
            assert method.upper() in served[path], f"{method} {path}"


def test_only_health_is_open():
    open_operations = [
        path
        for path, item in openapi_document()["paths"].items()
        for method, op in item.items()
        if method != "parameters" and op.get("security") == []
    ]
    assert open_operations == ["/health"]


def test_served_document_is_the_module_document(app):
    client = app.test_client()
    assert client.get("/openapi.json", headers={"X-API-Token": "t"}).json == openapi_document()


def _check(schema_name: str, answer: dict) -> None:
    from openapi_schema_validator import OAS30Validator

    root = {
        "$ref": f"#/components/schemas/{schema_name}",
        "components": openapi_document()["components"],
    }
    OAS30Validator(root).validate(answer)


def test_real_answers_match_their_schemas(app):
    client = app.test_client()
    auth = {"X-API-Token": "t"}
    account = {"id": "acme", "host": "smtp.acme.test", "port": 587, "password": "pw"}
    _check("AccountResponse", client.post("/account", json=account, headers=auth).json)
    message = {
        "id": "m1",
        "account_id": "acme",
        "from": "a@b.org",
        "to": ["c@d.org"],
        "subject": "s",
        "body": "b",
        "priority": "high",
    }
    added = client.post(
        "/commands/add-messages", json={"messages": [message, {"id": 5}]}, headers=auth
    )
    _check("AddMessagesResponse", added.json)
    _check("MessagesPage", client.get("/messages", headers=auth).json)
    _check("MessageDetail", client.get("/messages/m1", headers=auth).json)
    _check("Status", client.get("/status", headers=auth).json)
    _check("AccountsResponse", client.get("/accounts", headers=auth).json)
    _check("Error", client.get("/messages/none", headers=auth).json)
    _check("Health", client.get("/health").json)
