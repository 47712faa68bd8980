"""Answers checked against /openapi.json: their status is documented and they match it."""

from __future__ import annotations

from urllib.parse import parse_qsl

import jsonschema

from web.openapi import openapi_document


def check(response, method: str, path: str, body=None, query: str = "") -> None:
    """The answer's status is documented for the operation and the answer matches its schema."""
    document = openapi_document()
    operation = document["paths"][path][method.lower()]
    documented = operation["responses"].get(str(response.status_code))
    assert documented, f"{method} {path} answered an undocumented {response.status_code}"
    content = documented["content"].get(response.mimetype)
    assert content, f"{method} {path} answered an undocumented {response.mimetype}"
    if response.mimetype == "application/json":
        validator(content["schema"]).validate(response.json)
    names = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"}
    assert {name for name, _ in parse_qsl(query)} <= names, "an undocumented query argument"
    if body is not None and response.status_code == 200 and not response.json.get("rejected"):
        # a body the server took whole is one the document allows
        validator(operation["requestBody"]["content"]["application/json"]["schema"]).validate(body)


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    root = {**schema, "components": openapi_document()["components"]}
    return jsonschema.Draft202012Validator(root)
