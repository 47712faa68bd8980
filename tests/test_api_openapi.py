"""/openapi.json: generated from the models, valid OpenAPI 3.1, naming exactly the app's routes,
and true: real answers of every route match the schema documented for their status."""

from __future__ import annotations

import os
import re
import time
from urllib.parse import urlsplit

import jsonschema
import pytest
from openapi_spec_validator import validate
from pydantic import TypeAdapter

from common import enums, models, store, tenants
from common.enums import Next, Outcome
from common.models import HOST, MAX_BATCH, MAX_EPOCH, MAX_HOST_LENGTH, MAX_LIMIT, MAX_TTL
from common.store.bounces import Event, Suppress
from common.store.claims import Attempt, Transition
from tests.support.openapi import check
from web import schemas
from web.app import create_app
from web.openapi import REF, ROUTES, openapi_document

TOKEN = "t"
AUTH = {"X-API-Token": TOKEN}
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask for every route
LIMITS = ("limit_per_second", "limit_per_minute", "limit_per_hour", "limit_per_day")


def components() -> dict:
    return openapi_document()["components"]["schemas"]


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_document_is_valid_openapi_3_1():
    validate(openapi_document())
    assert openapi_document()["openapi"] == "3.1.0"


def test_route_table_is_the_url_map(make_config):
    app = create_app(make_config(api_token=TOKEN))
    served = {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT_METHODS
    }
    assert {(route.method, route.path) for route in ROUTES} == served
    paths = openapi_document()["paths"]
    assert {(method.upper(), path) for path, item in paths.items() for method in item} == served


def test_only_health_and_the_login_form_are_open():
    """/ui/login and /ui/logout need no session (they check the token and the Origin)."""
    open_operations = [
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == []
    ]
    assert open_operations == [
        ("get", "/health"),
        ("get", "/ui/login"),
        ("post", "/ui/login"),
        ("post", "/ui/logout"),
    ]
    schemes = openapi_document()["components"]["securitySchemes"]
    assert schemes["apiToken"] == {"type": "apiKey", "in": "header", "name": "X-API-Token"}
    assert schemes["bearerToken"] == {"type": "http", "scheme": "bearer"}
    assert schemes["uiSession"] == {"type": "apiKey", "in": "cookie", "name": "asyncmail_ui"}
    ui = openapi_document()["paths"]["/ui"]["get"]
    assert ui["security"] == [{"uiSession": []}]


def test_served_document_is_the_module_document(make_config):
    client = create_app(make_config(api_token=TOKEN)).test_client()
    assert client.get("/openapi.json", headers=AUTH).json == openapi_document()


@pytest.mark.parametrize("name", sorted(components()))
def test_every_component_is_its_models_own_schema(name):
    """Nothing in the document is written by hand: each schema is what pydantic says."""
    source = (
        getattr(schemas, name, None)
        or getattr(models, name, None)
        or getattr(tenants, name, None)
        or getattr(enums, name)
    )
    own = TypeAdapter(source).json_schema(ref_template=REF)
    own.pop("$defs", None)
    assert components()[name] == own


def test_model_constraints_are_published():
    account = components()["Account"]["properties"]
    assert account["host"]["pattern"] == HOST and account["host"]["maxLength"] == MAX_HOST_LENGTH
    assert account["ttl"]["maximum"] == MAX_TTL == 86400
    for name in LIMITS:
        assert {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT} in account[name]["anyOf"]
    message = components()["Message"]["properties"]
    assert message["id"]["maxLength"] == 255
    assert [member["maximum"] for member in message["deferred_ts"]["anyOf"]] == [MAX_EPOCH] * 2
    assert "null" not in str(message["priority"])  # an explicit null is refused
    assert components()["AddMessagesRequest"]["properties"]["messages"]["maxItems"] == MAX_BATCH
    query = openapi_document()["paths"]["/messages"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("maximum") for p in query}["limit"] == 1000


# -- real answers against the document ---------------------------------------------------------
def message(message_id: str, **fields) -> dict:
    return {"id": message_id, "from": "a@b.org", "to": ["c@d.org"], "subject": "s", "body": "b"} | {
        **fields
    }


GOOD_ACCOUNT = {"id": "acme", "host": "smtp.acme.test", "port": 587, "password": "pw"}
FULL_MESSAGE = message(
    "sent",
    account_id="acme",
    cc="Bob <bob@x.org>, e@f.org",
    priority="high",
    headers={"X-Campaign": "7"},
    attachments=[{"filename": "a.txt", "content": "aGk="}],
    custom={"kept": True},
)
CALLS = {  # id: (method, path, url, body, expected status, config overrides)
    "health": ("GET", "/health", "/health", None, 200, {}),
    "status": ("GET", "/status", "/status", None, 200, {}),
    "add": ("POST", "/commands/add-messages", None, {"messages": [message("n")]}, 200, {}),
    "add-one-rejected": (
        "POST", "/commands/add-messages", None, {"messages": [message("n"), {}]}, 200, {},
    ),
    "add-not-a-list": ("POST", "/commands/add-messages", None, {"messages": "n"}, 400, {}),
    "add-all-rejected": ("POST", "/commands/add-messages", None, {"messages": [{}]}, 400, {}),
    "add-too-large": (
        "POST", "/commands/add-messages", None, {"messages": [message("n", body="x" * 70_000)]},
        413, {},
    ),
    "delete": (
        "POST", "/commands/delete-messages", None, {"ids": ["sent", "sending", "nope"]}, 200, {},
    ),
    "delete-bad": ("POST", "/commands/delete-messages", None, {"ids": [1]}, 400, {}),
    "cleanup": ("POST", "/commands/cleanup-messages", None, {"older_than_seconds": 0}, 200, {}),
    "cleanup-kept-forever": (
        "POST", "/commands/cleanup-messages", None, None, 200,
        {"delivery_report_retention_seconds": 0},
    ),
    "cleanup-bad": (
        "POST", "/commands/cleanup-messages", None, {"older_than_seconds": -1}, 400, {},
    ),
    "run-now": ("POST", "/commands/run-now", None, None, 200, {}),
    "run-now-flush": ("POST", "/commands/run-now", None, {"flush": True}, 200, {}),
    "run-now-bad": ("POST", "/commands/run-now", None, {"flush": "yes"}, 400, {}),
    "retry-ids": (
        "POST", "/commands/retry", None, {"ids": ["sent", "later", "nope"]}, 200, {},
    ),
    "retry-status": (
        "POST", "/commands/retry", None, {"status": "error", "reset_attempts": True}, 200, {},
    ),
    "retry-bad": ("POST", "/commands/retry", None, {"status": "sent"}, 400, {}),
    "retry-unknown-account": ("POST", "/commands/retry", None, {"account_id": "x"}, 404, {}),
    "suspend": ("POST", "/commands/suspend", None, None, 200, {}),
    "activate": ("POST", "/commands/activate", None, None, 200, {}),
    "account": ("POST", "/account", None, {**GOOD_ACCOUNT, "limit_per_day": 5}, 200, {}),
    "account-bad": ("POST", "/account", None, {**GOOD_ACCOUNT, "ttl": 86401}, 400, {}),
    "accounts": ("GET", "/accounts", None, None, 200, {}),
    "usage": ("GET", "/accounts/{account_id}/usage", "/accounts/acme/usage", None, 200, {}),
    "usage-unknown": ("GET", "/accounts/{account_id}/usage", "/accounts/x/usage", None, 404, {}),
    "delete-account-busy": ("DELETE", "/account/{account_id}", "/account/acme", None, 409, {}),
    "delete-account": (
        "DELETE", "/account/{account_id}", "/account/acme?purge=true", None, 200, {},
    ),
    "delete-account-unknown": ("DELETE", "/account/{account_id}", "/account/x", None, 404, {}),
    "messages": ("GET", "/messages", "/messages?limit=1&active_only=1", None, 200, {}),
    "messages-payload": ("GET", "/messages", "/messages?include=payload", None, 200, {}),
    "messages-sent": ("GET", "/messages", "/messages?status=sent&account_id=acme", None, 200, {}),
    "messages-bad": ("GET", "/messages", "/messages?limit=1001", None, 400, {}),
    "message-sent": ("GET", "/messages/{message_id}", "/messages/sent", None, 200, {}),
    "message-sending": ("GET", "/messages/{message_id}", "/messages/sending", None, 200, {}),
    "message-unknown": ("GET", "/messages/{message_id}", "/messages/none", None, 404, {}),
    "suppressions": ("GET", "/suppressions", "/suppressions?limit=1", None, 200, {}),
    "suppressions-bad": ("GET", "/suppressions", "/suppressions?limit=0", None, 400, {}),
    "suppress": (
        "POST", "/suppressions", None, {"address": "Ann@X.org", "reason": "complaint"}, 200, {},
    ),
    "suppress-bad": ("POST", "/suppressions", None, {"address": "not an address"}, 400, {}),
    "unsuppress": (
        "DELETE", "/suppressions/{address}", "/suppressions/gone@x.org", None, 200, {},
    ),
    "unsuppress-unknown": (
        "DELETE", "/suppressions/{address}", "/suppressions/nobody@x.org", None, 404, {},
    ),
    "metrics": ("GET", "/metrics", None, None, 200, {}),
    "openapi": ("GET", "/openapi.json", None, None, 200, {}),
    "ui-without-session": ("GET", "/ui", None, None, 303, {}),
    "ui-login-form": ("GET", "/ui/login", None, None, 200, {}),
    "ui-login-without-origin": ("POST", "/ui/login", None, None, 403, {}),
    "ui-logout-without-origin": ("POST", "/ui/logout", None, None, 403, {}),
    "no-token": ("GET", "/accounts", None, None, 401, {"api_token": "other"}),
    "tenant-create": (
        "POST", "/tenants", None,
        {"id": "shop", "name": "Shop", "client_sync_url": "https://u:p@shop.example/sync",
         "client_sync_token": "s3", "limit_per_minute": 5, "limit_behavior": "reject"},
        201, {},
    ),
    "tenant-create-bad": ("POST", "/tenants", None, {"id": "Not a slug", "name": "x"}, 400, {}),
    "tenant-create-exists": ("POST", "/tenants", None, {"id": "blog", "name": "x"}, 409, {}),
    "tenants": ("GET", "/tenants", None, None, 200, {}),
    "tenant": ("GET", "/tenants/{tenant_id}", "/tenants/blog", None, 200, {}),
    "tenant-unknown": ("GET", "/tenants/{tenant_id}", "/tenants/none", None, 404, {}),
    "tenant-change": (
        "PATCH", "/tenants/{tenant_id}", "/tenants/blog",
        {"name": "Blog", "limit_per_day": 100, "client_sync_url": None}, 200, {},
    ),
    "tenant-change-default-upstream": (
        "PATCH", "/tenants/{tenant_id}", "/tenants/default",
        {"client_sync_url": "https://x.example/sync"}, 400, {},
    ),
    "tenant-rotate": (
        "POST", "/tenants/{tenant_id}/rotate-token", "/tenants/blog/rotate-token", None, 200, {},
    ),
    "tenant-rotate-default": (
        "POST", "/tenants/{tenant_id}/rotate-token", "/tenants/default/rotate-token", None, 400,
        {},
    ),
    "tenant-suspend": (
        "POST", "/tenants/{tenant_id}/suspend", "/tenants/blog/suspend", None, 200, {},
    ),
    "tenant-activate": (
        "POST", "/tenants/{tenant_id}/activate", "/tenants/blog/activate", None, 200, {},
    ),
    "tenant-delete-busy": ("DELETE", "/tenants/{tenant_id}", "/tenants/blog", None, 409, {}),
    "tenant-delete": (
        "DELETE", "/tenants/{tenant_id}", "/tenants/blog?purge=true", None, 200, {},
    ),
    "tenant-delete-default": (
        "DELETE", "/tenants/{tenant_id}", "/tenants/default", None, 400, {},
    ),
}  # fmt: skip


@pytest.fixture
def app(make_config, conn):
    """An app whose database holds an account, a sent, a sending and a deferred message."""
    app = create_app(make_config(api_token=TOKEN, smtp_host="127.0.0.1", smtp_port=2525))
    client = app.test_client()
    assert client.post("/account", json=GOOD_ACCOUNT, headers=AUTH).status_code == 200
    later = int(time.time()) + 3600
    batch = [
        FULL_MESSAGE,
        message("sending"),
        message("later", account_id="acme", deferred_ts=later),
    ]
    assert (
        client.post("/commands/add-messages", json={"messages": batch}, headers=AUTH).json["queued"]
        == 3
    )
    now = time.time()
    store.claims.claim(conn, "dispatcher-00", now, 60, 10, True)
    attempt = Attempt("sent", "acme", now, Outcome.SENT, 250, "2.0.0 ok", 0.25)
    refused = {"x@y.org": [550, "no such user"]}
    sent = Transition(attempt, Next.SENT, now, refused=refused, possible_duplicate=True)
    store.claims.record(conn, [sent], "dispatcher-00", "dispatcher-00")
    store.heartbeats.beat(conn, "dispatcher-00", "dispatcher", os.getpid(), now)
    bounce = Event("sent", "c@d.org", "hard", "failed", "5.1.1", "smtp; 550 5.1.1 unknown")
    gone = Suppress("gone@x.org", "hard_bounce", "5.1.1", "smtp; 550 5.1.1 unknown")
    store.bounces.record_mail(
        conn, "<dsn@mx>", "processed", "rfc3464", [bounce], [gone], now, "default"
    )
    store.circuits.trip(
        conn, "default", "acme", now, now - 1, "ConnectionRefusedError", lambda n: 5.0
    )
    blog = client.post("/tenants", json={"id": "blog", "name": "Blog"}, headers=AUTH)
    assert blog.status_code == 201
    blog_auth = {"X-API-Token": blog.json["token"]}
    assert client.post("/account", json=GOOD_ACCOUNT, headers=blog_auth).status_code == 200
    queued = {"messages": [message("b1", account_id="acme")]}
    assert client.post("/commands/add-messages", json=queued, headers=blog_auth).status_code == 200
    return app


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_real_answer_matches_its_documented_schema(app, call):
    method, path, url, body, status, overrides = call
    client = create_app(app.config["ASYNCMAIL"], max_request_bytes=64 * 1024, **overrides)
    headers = {} if path == "/health" else AUTH
    response = client.test_client().open(url or path, method=method, json=body, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    check(response, method, path, body, urlsplit(url or path).query)


def test_status_page_answers_match(app):
    """Logged in through the form, every /ui answer is the documented HTML."""
    client = app.test_client()
    origin = {"Origin": "http://localhost"}
    wrong = client.post("/ui/login", data={"token": "nope"}, headers=origin)
    check(wrong, "POST", "/ui/login")
    assert wrong.status_code == 401 and wrong.mimetype == "text/html"
    right = client.post("/ui/login", data={"token": TOKEN}, headers=origin)
    check(right, "POST", "/ui/login")
    assert right.status_code == 303
    page = client.get("/ui")
    check(page, "GET", "/ui")
    assert page.status_code == 200
    out = client.post("/ui/logout", headers=origin)
    check(out, "POST", "/ui/logout")
    assert out.status_code == 303
    no_token = create_app(app.config["ASYNCMAIL"], api_token=None).test_client()
    check(no_token.get("/ui/login"), "GET", "/ui/login")
    assert no_token.get("/ui/login").status_code == 303
    remote = no_token.post("/ui/login", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    check(remote, "POST", "/ui/login")
    assert remote.status_code == 401 and remote.mimetype == "application/json"


def test_calls_cover_every_route():
    assert {(call[0], call[1]) for call in CALLS.values()} == {(r.method, r.path) for r in ROUTES}


def test_answer_of_an_unreachable_database_matches(make_config, tmp_path):
    app = create_app(make_config(api_token=TOKEN, db_path=tmp_path))  # a directory: no database
    check(app.test_client().get("/health"), "GET", "/health")


def test_answer_of_a_locked_database_matches(app, conn):
    impatient = create_app(app.config["ASYNCMAIL"], db_wait_seconds=0.05)
    conn.execute("BEGIN IMMEDIATE")
    try:
        response = impatient.test_client().post("/commands/suspend", headers=AUTH)
    finally:
        conn.execute("ROLLBACK")
    assert response.status_code == 503
    check(response, "POST", "/commands/suspend")


def test_an_undocumented_key_fails_the_check(app):
    """The answer models forbid unknown keys, so a key a route adds must be documented."""
    response = app.test_client().post("/commands/suspend", headers=AUTH)
    response.set_data(b'{"ok": true, "active": false, "extra": 1}')
    with pytest.raises(jsonschema.ValidationError, match="extra"):
        check(response, "POST", "/commands/suspend")


def test_the_document_says_who_may_call_each_route():
    """Admin routes name the admin token alone; the others the admin's or a tenant's, and
    take X-Tenant (docs/tenants.md); x-asyncmail-access says it in one word."""
    admin = [{"apiToken": []}, {"bearerToken": []}]
    either = [*admin, {"tenantToken": []}, {"tenantBearer": []}]
    for route in ROUTES:
        operation = openapi_document()["paths"][route.path][route.method.lower()]
        assert operation["x-asyncmail-access"] == route.access
        headers = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "header"}
        if route.access in {"admin", "tenant"}:
            assert operation["security"] == (admin if route.admin else either), route.path
            assert headers == {"X-Tenant"}
        else:
            assert headers == set()
    admin_paths = {(r.method, r.path) for r in ROUTES if r.access == "admin"}
    assert ("GET", "/metrics") in admin_paths and ("POST", "/tenants") in admin_paths
    assert {path for _, path in admin_paths} <= {"/metrics"} | {
        r.path for r in ROUTES if r.path.startswith("/tenants")
    }


def test_the_admin_routes_of_the_table_are_the_apps_admin_only_views(make_config):
    """The table (published) and the views' marks (enforced, web.auth) say the same."""
    app = create_app(make_config(api_token=TOKEN))
    marked = {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions[rule.endpoint], "admin_only", False)
        for method in rule.methods - IMPLICIT_METHODS
    }
    assert marked == {(r.method, r.path) for r in ROUTES if r.admin}
