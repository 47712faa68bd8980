"""Absurd numbers in every numeric field of every route: a 400 with a reason, never a 500.

The fields come from /openapi.json itself (every integer or number a body or a query takes),
so a numeric field added later is covered without touching this file.  In add-messages the
bad number is in one message of two: that one is rejected, the other is queued.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from common import store
from tests.support.factories import account, message
from web.app import create_app
from web.openapi import ROUTES, openapi_document

TOKEN = "t"
HEADERS = {"X-API-Token": TOKEN, "Content-Type": "application/json"}
ABSURD = {"10^320": "1" + "0" * 320, "-10^320": "-1" + "0" * 320, "1e320": "1e320"}
MARK = "__absurd__"
VALID_BODIES = {  # a body each operation accepts; the absurd number replaces one field
    "addMessages": {"messages": [message("bad"), message("good")], "default_priority": 1},
    "cleanupMessages": {"older_than_seconds": 0},
    "saveAccount": account("acme"),
    "createTenant": {"id": "acme", "name": "Acme"},
    "changeTenant": {"limit_per_minute": 5},
}
PATH_VALUES = {"{tenant_id}": "default"}  # a resource the route's body is checked against


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = openapi_document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def numeric_paths(schema: dict, path: tuple = ()) -> set[tuple]:
    """Where in a document of this schema a number may stand (list items as index 0)."""
    schema = _resolve(schema)
    found = set()
    for member in schema.get("anyOf", ()):
        found |= numeric_paths(member, path)
    if schema.get("type") in ("integer", "number"):
        found.add(path)
    for name, prop in schema.get("properties", {}).items():
        found |= numeric_paths(prop, (*path, name))
    if "items" in schema:
        found |= numeric_paths(schema["items"], (*path, 0))
    return found


def body_cases() -> list[tuple[str, str, tuple]]:
    cases = []
    for route in ROUTES:
        if route.body is not None:
            operation = openapi_document()["paths"][route.path][route.method.lower()]
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            cases += [(route.operation_id, route.path, p) for p in sorted(numeric_paths(schema))]
    return cases


def _request(operation: str, path: str) -> tuple[str, str]:
    """(method, url) of an operation, its path parameters filled in."""
    [method] = [r.method for r in ROUTES if r.operation_id == operation]
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return method, path


def query_cases() -> list[tuple[str, str]]:
    return [
        (route.path, parameter["name"])
        for route in ROUTES
        for parameter in openapi_document()["paths"][route.path][route.method.lower()].get(
            "parameters", ()
        )
        if parameter["in"] == "query" and numeric_paths(parameter["schema"])
    ]


@pytest.fixture
def client(make_config):
    return create_app(make_config(api_token=TOKEN, smtp_host="127.0.0.1")).test_client()


def with_absurd(body: dict, path: tuple, literal: str) -> str:
    """The body as JSON text with ``literal`` (not a Python number) at ``path``."""
    document = json.loads(json.dumps(body))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = MARK
    return json.dumps(document).replace(json.dumps(MARK), literal)


def test_every_route_with_a_numeric_field_is_covered():
    assert {operation for operation, _, _ in body_cases()} == set(VALID_BODIES)
    assert ("/messages", "limit") in query_cases() and ("/messages", "cursor") in query_cases()


@pytest.mark.parametrize("literal", ABSURD.values(), ids=ABSURD.keys())
@pytest.mark.parametrize(
    "operation,path,field", body_cases(), ids=[".".join(map(str, c[2])) for c in body_cases()]
)
def test_an_absurd_number_in_a_body_is_a_400(client, conn, operation, path, field, literal):
    text = with_absurd(VALID_BODIES[operation], field, literal)
    method, url = _request(operation, path)
    response = client.open(url, method=method, data=text, headers=HEADERS)
    answer = response.json
    if field[:2] == ("messages", 0):  # one message of the batch: only that one is refused
        assert response.status_code == 200, answer
        assert [r["id"] for r in answer["rejected"]] == ["bad"]
        assert f"'{field[2]}'" in answer["rejected"][0]["reason"]
        assert store.messages.get(conn, "default", "good", 0) is not None
    else:
        assert response.status_code == 400, answer
        assert answer["ok"] is False and answer["error"]


@pytest.mark.parametrize("literal", ABSURD.values(), ids=ABSURD.keys())
@pytest.mark.parametrize("path,name", query_cases())
def test_an_absurd_number_in_a_query_is_a_400(client, path, name, literal):
    response = client.get(f"{path}?{urlencode({name: literal})}", headers=HEADERS)
    assert response.status_code == 400
    assert name in response.json["error"]
