"""The isolation matrix: every route of the API (``web.openapi.ROUTES``) called by every kind
of caller, about tenant A's data, with the answer each must get (docs/tenants.md).

Columns: A's own token, B's token, the admin token naming no tenant (the default tenant, or
the whole service), the admin token naming A (X-Tenant), no token, and B's token naming A.
Each cell runs on a fresh database holding tenants A and B with their accounts, messages
(queued, sent, failed, waiting for a retry) and suppressions.  A cell checks the status,
that the answer matches the published schema, and, for a route that lists or changes
something, whether A's data was seen or changed.  A route added without a row here fails
``test_every_route_has_a_row``, and its cells fail with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from common import store
from common.enums import Next
from tests.support.factories import account, message
from tests.support.openapi import check
from tests.support.tenancy import ADMIN_TOKEN, create_tenant, headers, outcomes
from web.app import create_app
from web.openapi import ROUTES

OWN, OTHER, ADMIN, ADMIN_NAMING, NO_TOKEN, FOREIGN = COLUMNS = (
    "own tenant",
    "another tenant",
    "admin",
    "admin naming the tenant",
    "no token",
    "tenant naming another",
)
SCOPED = (200, 200, 200, 200, 401, 403)  # acts in the caller's tenant
RESOURCE = (200, 404, 404, 200, 401, 403)  # names one of A's resources
ADMIN_ONLY = (403, 403, 200, 200, 401, 403)
AS_PUBLIC = (200,) * 6


def ids(key: str) -> Callable:
    return lambda answer: {row["id"] for row in answer.json[key]}


@dataclass(frozen=True)
class Case:
    """One route's calls: the same request in every column, and what each must get."""

    method: str
    url: str
    expect: tuple[int, ...]
    body: dict | None = None
    sees: Callable | None = None  # answer -> True when it shows tenant A's data
    probe: Callable | None = None  # conn -> a snapshot of the part of A the call may change
    changes: tuple[str, ...] = (OWN, ADMIN_NAMING)  # the columns that may change it
    setup: Callable | None = None  # conn -> None, before the call
    form: dict | None = None  # a form body (the status page)
    extra: dict = field(default_factory=dict)


def a_messages(conn) -> set[str]:
    return {r["id"] for r in store.messages.list_page(conn, "a", 0, limit=100)[0]}


def a_status(conn, message_id: str) -> str:
    return store.messages.get(conn, "a", message_id, 0)["status"]


def a_tenant(conn) -> dict | None:
    return store.tenants.get(conn, "a")


def a_token(conn) -> str | None:
    return store.tenants.token_hash(conn, "a")


def pause_a(conn) -> None:
    store.tenants.set_switch(conn, "a", "dispatching", False, 0)


MESSAGE = message("new-a", "acct-a")
CASES = {
    "health": Case("GET", "/health", AS_PUBLIC),
    "status": Case(
        "GET", "/status", SCOPED, sees=lambda answer: answer.json.get("tenant") == "a"
    ),
    "addMessages": Case(
        "POST", "/commands/add-messages", (200, 400, 400, 200, 401, 403),
        body={"messages": [MESSAGE]}, probe=a_messages,
    ),  # elsewhere acct-a is unknown: every message is rejected
    "deleteMessages": Case(
        "POST", "/commands/delete-messages", SCOPED, body={"ids": ["msg-a"]}, probe=a_messages
    ),
    "cleanupMessages": Case(
        "POST", "/commands/cleanup-messages", SCOPED, body={"older_than_seconds": 0},
        probe=a_messages, changes=(OWN, ADMIN, ADMIN_NAMING),  # the admin's: whole service
    ),
    "runNow": Case(
        "POST", "/commands/run-now", SCOPED, body={"flush": True},
        probe=lambda conn: a_status(conn, "retry-a"), changes=(OWN, ADMIN, ADMIN_NAMING),
    ),
    "retry": Case(
        "POST", "/commands/retry", SCOPED, body={"status": "error"},
        probe=lambda conn: a_status(conn, "failed-a"),
    ),
    "suspend": Case(
        "POST", "/commands/suspend", SCOPED, probe=lambda conn: a_tenant(conn)["dispatching"]
    ),
    "activate": Case(
        "POST", "/commands/activate", SCOPED, probe=lambda conn: a_tenant(conn)["dispatching"],
        setup=pause_a,
    ),
    "saveAccount": Case(
        "POST", "/account", SCOPED, body=account("acct-new"),
        probe=lambda conn: store.accounts.ids(conn, "a"),
    ),
    "listAccounts": Case("GET", "/accounts", SCOPED, sees=lambda r: "acct-a" in ids("accounts")(r)),
    "accountUsage": Case("GET", "/accounts/acct-a/usage", RESOURCE),
    "deleteAccount": Case(
        "DELETE", "/account/acct-a?purge=true", RESOURCE,
        probe=lambda conn: store.accounts.ids(conn, "a"),
    ),
    "listMessages": Case("GET", "/messages", SCOPED, sees=lambda r: "msg-a" in ids("messages")(r)),
    "getMessage": Case("GET", "/messages/msg-a", RESOURCE),
    "listSuppressions": Case(
        "GET", "/suppressions", SCOPED,
        sees=lambda r: "sup@a.org" in {s["address"] for s in r.json["suppressions"]},
    ),
    "suppress": Case(
        "POST", "/suppressions", SCOPED, body={"address": "new@x.org"},
        probe=lambda conn: store.suppressions.get(conn, "a", "new@x.org"),
    ),
    "unsuppress": Case(
        "DELETE", "/suppressions/sup@a.org", RESOURCE,
        probe=lambda conn: store.suppressions.get(conn, "a", "sup@a.org"),
    ),
    "metrics": Case("GET", "/metrics", ADMIN_ONLY),
    "openapi": Case("GET", "/openapi.json", SCOPED),
    # the status page opens with its session cookie only: a token header opens nothing
    "statusPage": Case("GET", "/ui", (303,) * 6),
    "loginForm": Case("GET", "/ui/login", AS_PUBLIC),
    "login": Case("POST", "/ui/login", (403,) * 6, form={"token": ADMIN_TOKEN}),  # no Origin
    "logout": Case("POST", "/ui/logout", (403,) * 6),
    "createTenant": Case(
        "POST", "/tenants", (403, 403, 201, 201, 401, 403), body={"id": "c", "name": "C"},
        probe=lambda conn: store.tenants.exists(conn, "c"), changes=(ADMIN, ADMIN_NAMING),
    ),
    "listTenants": Case(
        "GET", "/tenants", ADMIN_ONLY, sees=lambda r: "a" in ids("tenants")(r)
    ),
    "getTenant": Case("GET", "/tenants/a", ADMIN_ONLY),
    "changeTenant": Case(
        "PATCH", "/tenants/a", ADMIN_ONLY, body={"name": "A2", "limit_per_day": 7},
        probe=a_tenant, changes=(ADMIN, ADMIN_NAMING),
    ),
    "deleteTenant": Case(
        "DELETE", "/tenants/a?purge=true", ADMIN_ONLY, probe=a_tenant,
        changes=(ADMIN, ADMIN_NAMING),
    ),
    "rotateTenantToken": Case(
        "POST", "/tenants/a/rotate-token", ADMIN_ONLY, probe=a_token,
        changes=(ADMIN, ADMIN_NAMING),
    ),
    "suspendTenant": Case(
        "POST", "/tenants/a/suspend", ADMIN_ONLY, probe=lambda conn: a_tenant(conn)["active"],
        changes=(ADMIN, ADMIN_NAMING),
    ),
    "activateTenant": Case(
        "POST", "/tenants/a/activate", ADMIN_ONLY,
        probe=lambda conn: a_tenant(conn)["active"], changes=(ADMIN, ADMIN_NAMING),
        setup=lambda conn: store.tenants.set_switch(conn, "a", "active", False, 0),
    ),
}  # fmt: skip
# the list routes show A's data to exactly these columns (their sees= says so)
SEEING = {OWN, ADMIN_NAMING}
SEEING_EVERYTHING = {"listTenants": {ADMIN, ADMIN_NAMING}}


@pytest.fixture
def world(make_config, conn):
    """Tenants a and b, and the default one, with A's data in every state; the tokens."""
    app = create_app(make_config(api_token=ADMIN_TOKEN, smtp_host="127.0.0.1", smtp_port=2525))
    client = app.test_client()
    tokens = {"a": create_tenant(client, "a"), "b": create_tenant(client, "b")}
    for tenant, token in tokens.items():
        own = headers(token)
        answer = client.post("/account", json=account(f"acct-{tenant}"), headers=own)
        assert answer.status_code == 200
        states = ("msg", "done", "failed", "retry")
        items = [message(f"{state}-{tenant}", f"acct-{tenant}") for state in states]
        answer = client.post("/commands/add-messages", json={"messages": items}, headers=own)
        assert answer.json["queued"] == len(states)
        body = {"address": f"sup@{tenant}.org"}
        assert client.post("/suppressions", json=body, headers=own).status_code == 200
        finished = {f"done-{tenant}": Next.SENT, f"failed-{tenant}": Next.ERROR}
        outcomes(conn, tenant, {**finished, f"retry-{tenant}": Next.RETRY})
    return app, tokens


def caller_headers(column: str, tokens: dict) -> dict:
    return {
        OWN: headers(tokens["a"]),
        OTHER: headers(tokens["b"]),
        ADMIN: headers(ADMIN_TOKEN),
        ADMIN_NAMING: headers(ADMIN_TOKEN, "a"),
        NO_TOKEN: {},
        FOREIGN: headers(tokens["b"], "a"),
    }[column]


def test_every_route_has_a_row():
    assert set(CASES) == {route.operation_id for route in ROUTES}


CELLS = [(route, column) for route in ROUTES for column in COLUMNS]


@pytest.mark.parametrize("route,column", CELLS, ids=[f"{r.operation_id}|{c}" for r, c in CELLS])
def test_isolation_matrix(world, conn, route, column):
    app, tokens = world
    case = CASES[route.operation_id]
    assert (case.method, case.url.split("?")[0].split("/")[1]) == (
        route.method, route.path.split("/")[1]
    )  # fmt: skip
    if case.setup:
        case.setup(conn)
    before = case.probe(conn) if case.probe else None
    answer = app.test_client().open(
        case.url, method=case.method, json=case.body, data=case.form,
        headers=caller_headers(column, tokens),
    )  # fmt: skip
    expected = case.expect[COLUMNS.index(column)]
    assert answer.status_code == expected, (column, answer.get_data(as_text=True)[:300])
    check(answer, route.method, route.path, case.body, case.url.partition("?")[2])
    if case.sees and answer.status_code == 200:
        seeing = SEEING_EVERYTHING.get(route.operation_id, SEEING)
        assert case.sees(answer) is (column in seeing), column
    if case.probe:
        changed = case.probe(conn) != before
        assert changed is (column in case.changes), column
