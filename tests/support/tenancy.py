"""Tenants for tests: create them through the API, and leave messages in given states."""

from __future__ import annotations

import time

from common import store
from common.enums import Next, Outcome
from common.store.claims import Attempt, Transition, key

ADMIN_TOKEN = "admin-token"
ADMIN = {"X-API-Token": ADMIN_TOKEN}


def headers(token: str, tenant: str | None = None) -> dict:
    """The headers of a call with ``token``, naming ``tenant`` in X-Tenant when given."""
    found = {"X-API-Token": token}
    if tenant is not None:
        found["X-Tenant"] = tenant
    return found


def create_tenant(client, tenant_id: str, **settings) -> str:
    """Create a tenant through the API (admin token); its token."""
    answer = client.post("/tenants", json={"id": tenant_id, "name": tenant_id, **settings},
                         headers=ADMIN)  # fmt: skip
    assert answer.status_code == 201, answer.json
    return answer.json["token"]


def outcomes(conn, tenant: str, states: dict[str, Next], now: float | None = None) -> None:
    """Give these queued messages of the tenant an outcome as a dispatcher would (every other
    ready row the claim takes goes back as it was)."""
    now = time.time() if now is None else now
    claim = store.claims.claim(conn, "test-dispatcher", now, 60, 1000, True)
    mine = {r["id"]: r for r in claim.messages if r["tenant_id"] == tenant and r["id"] in states}
    assert set(mine) == set(states), (set(states) - set(mine), "not claimed")
    others = [key(r) for r in claim.messages if key(r) not in {(tenant, i) for i in states}]
    store.claims.release(conn, others, "test-dispatcher", now)
    transitions = []
    for message_id, state in states.items():
        outcome = {Next.SENT: Outcome.SENT, Next.ERROR: Outcome.PERMANENT}.get(
            state, Outcome.TEMPORARY
        )
        code = {Outcome.SENT: 250, Outcome.PERMANENT: 550}.get(outcome, 451)
        row = mine[message_id]
        attempt = Attempt(message_id, row["account_id"], now, outcome, code, f"{code} test", 0.01,
                          tenant)  # fmt: skip
        later = now + 3600 if state is Next.RETRY else None
        error = None if state is Next.SENT else f"{code} test"
        transitions.append(Transition(attempt, state, now, later, error=error))
    stale = store.claims.record(conn, transitions, "test-dispatcher", "test-dispatcher")
    assert stale == []
