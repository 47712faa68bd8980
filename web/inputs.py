"""Reading a request: its JSON body and its query arguments, or a 400 that says what is wrong."""

from __future__ import annotations

import json

from flask import abort, request

from web.db import get_config

TRUTHY = frozenset({"1", "true", "yes", "on"})


def json_body(optional: bool = False) -> dict:
    """The request's JSON object, or a 400 (413 past max_request_bytes)."""
    raw = request.get_data(cache=False)
    if len(raw) > get_config().max_request_bytes:
        abort(413)
    if not raw.strip():
        if optional:
            return {}
        abort(400, "The request body is empty; send a JSON object.")
    try:
        data = json.loads(raw)
    except RecursionError:
        abort(400, "The request body is not valid JSON (nested too deeply).")
    except ValueError as exc:
        abort(400, f"The request body is not valid JSON ({exc}).")
    if not isinstance(data, dict):
        abort(400, "The request body must be a JSON object.")
    return data


def flag(name: str) -> bool:
    """A boolean query argument (true/1/yes/on)."""
    return request.args.get(name, "").strip().lower() in TRUTHY


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query argument within [low, high], or a 400 naming it."""
    text = request.args.get(name)
    try:
        value = default if text is None else int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        abort(400, f"'{name}' must be an integer between {low} and {high}.")
    return value
