"""Tenants with real processes (docs/tenants.md): one tenant's hanging upstream holds back no
other tenant's reports, a tenant-wide limit holds across dispatcher processes, and a database
of the previous schema migrates and serves the reference's client flow unchanged."""

from __future__ import annotations

import signal
import time

import apsw
import pytest
import requests

from common import operations, store
from common.enums import Next
from common.models import Account
from common.operations import tenants as tenant_ops
from common.ratelimit import Ledger, Limits, Meter
from common.tenants import NewTenant
from tests.support import procs
from tests.support.db import enqueue
from tests.support.dispatchers import dispatchers, wait_received
from tests.support.factories import message
from tests.support.ratelimit import assert_strict
from tests.support.stack import Stack
from tests.support.tenancy import outcomes
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow


def tenant(conn, config, tenant_id: str, **settings) -> None:
    new = NewTenant(id=tenant_id, name=tenant_id, **settings)
    tenant_ops.create(conn, config, new, time.time())


def smtp_account(conn, config, tenant_id: str, peer, account_id: str = "main") -> None:
    body = Account.model_validate(peer.account(account_id))
    operations.save_account(conn, config, tenant_id, body, time.time())


@pytest.fixture
def reporter_process(config, tmp_path):
    """A running ``python -m reporter`` (its streams in threads), killed after the test."""
    env = procs.service_env(config.var_dir, config.config_path)
    proc = procs.start("reporter", env, tmp_path / "reporter.log")
    yield proc
    procs.stop(proc, signal.SIGKILL)


def test_a_hanging_upstream_holds_back_no_other_tenants_reports(
    conn, config, smtp_server, reporter_process
):
    """A's upstream takes its first report and never answers; meanwhile B sends 200 messages
    and every one of their reports arrives, A's upstream still silent."""
    peer = smtp_server()
    with Upstream() as up_a, Upstream() as up_b:
        tenant(conn, config, "a", client_sync_url=up_a.url)
        tenant(conn, config, "b", client_sync_url=up_b.url)
        for name in ("a", "b"):
            smtp_account(conn, config, name, peer)
        up_a.hang()
        with dispatchers(config, 1):
            enqueue(conn, config, *[message(f"a{n}", "main") for n in range(3)],
                    now=time.time(), tenant="a")  # fmt: skip
            up_a.wait_for_requests(1, timeout=30)  # A's stream is stuck in that request
            items = [message(f"b{n}", "main") for n in range(200)]
            enqueue(conn, config, *items, now=time.time(), tenant="b")
            reported = up_b.wait_for_items(200, timeout=60)
            assert up_a.answered() == []  # A's upstream is still down
            up_a.release()
            up_a.wait_for_items(3, timeout=60)
    assert sorted(i["id"] for i in reported) == sorted(f"b{n}" for n in range(200))
    assert {i["tenant_id"] for i in reported} == {"b"}
    assert {i["tenant_id"] for i in up_a.items()} == {"a"}
    wait_received(peer, 203)


def settled(conn) -> bool:
    """Five of acme's messages sent, none in a dispatcher's hands, none claimable now."""
    now = time.time()
    counts = store.messages.status_counts(conn, now, "acme")
    return (counts["sent"], counts["sending"]) == (5, 0) and not store.messages.oldest_ready_age(
        conn, now, "acme"
    )


def test_a_tenant_wide_limit_holds_across_two_accounts_and_three_dispatchers(
    conn, config, smtp_server
):
    """limit_per_minute=5 for the tenant, 20 messages over two accounts, three dispatcher
    processes: 5 sends, no minute of their recorded starts holds more, the rest deferred
    until a slot frees."""
    peer = smtp_server()
    tenant(conn, config, "acme", limit_per_minute=5)
    for account_id in ("one", "two"):
        smtp_account(conn, config, "acme", peer, account_id)
    items = [message(f"m{n}", ("one", "two")[n % 2]) for n in range(20)]
    with dispatchers(config, 3):
        enqueue(conn, config, *items, now=time.time(), tenant="acme")
        # within 30 s, so all five in one minute: a sixth would have broken the limit
        procs.wait_for(lambda: settled(conn), timeout=30, message="5 sent, the rest waiting")
    reserved = Ledger(config.ratelimit_dir).starts(Meter("acme", whole=True))
    assert len(reserved) == 5
    assert_strict(reserved, Limits(per_minute=5))  # the tenant's ledger: one history for all
    attempted = store.attempts.tenant_send_starts(conn, "acme", 0)
    assert len(attempted) == len(peer.received) == 5
    per_account = [store.attempts.send_starts(conn, "acme", a, 0) for a in ("one", "two")]
    assert all(per_account) and sum(map(len, per_account)) == 5  # both shared the window
    waiting = conn.execute(
        "SELECT min(ready_at) AS t FROM messages WHERE tenant_id = 'acme' AND sent_ts IS NULL"
    ).fetchone()["t"]
    assert waiting >= min(reserved) + 60  # the first slot frees a minute after the first start


# -- the migration --------------------------------------------------------------------------
def version_5_database(path, now: float) -> dict:
    """A database of schema 5 (before tenants) with messages in every state; their rowids."""
    conn = apsw.Connection(str(path))
    conn.create_scalar_function("legacy_message_id", store.db.legacy_message_id, 2)
    for number, migration in enumerate(store.db.MIGRATIONS[:5], start=1):
        conn.execute(migration)
        conn.execute(f"PRAGMA user_version={number}")
    conn.execute(
        "INSERT INTO accounts(id, host, port, created_at, updated_at) "
        "VALUES ('old', '127.0.0.1', 9, 1, 1)"
    )
    rows = {  # id: (sent_ts, error_ts, deferred_ts, lease_expires, reported_ts, attempts)
        "queued": (None, None, None, None, None, 0),
        "scheduled": (None, None, now + 3600, None, None, 0),
        "retrying": (None, None, now + 600, None, None, 1),
        "sending": (None, None, None, now + 60, None, 0),
        "sent": (now - 5, None, None, None, None, 1),
        "reported": (now - 50, None, None, None, now - 40, 1),
        "failed": (None, now - 5, None, None, None, 1),
    }
    for message_id, (sent, failed, deferred, lease, reported, attempts) in rows.items():
        conn.execute(
            "INSERT INTO messages(id, account_id, payload, created_at, updated_at, ready_at, "
            "enqueued_at, sent_ts, error_ts, deferred_ts, lease_owner, lease_expires, "
            "reported_ts, attempts, outcome_at, message_id_header) VALUES (?, 'old', '{}', "
            "1, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, deferred or lease or now - 100, now - 100, sent, failed, deferred,
             lease and "dispatcher-00:1", lease, reported, attempts, sent or failed,
             f"<{message_id}@old.example>"),
        )  # fmt: skip
        if attempts:
            conn.execute(
                "INSERT INTO attempts(message_id, account_id, ts, outcome) "
                "VALUES (?, 'old', ?, 'temporary')",
                (message_id, now - 60),
            )
    conn.execute("DELETE FROM messages WHERE id = 'queued'")  # a gap in the rowids
    conn.execute(
        "INSERT INTO messages(id, account_id, payload, created_at, updated_at, ready_at, "
        "enqueued_at) VALUES ('queued', 'old', '{}', 1, 1, ?, ?)",
        (now - 100, now - 100),
    )
    conn.execute(
        "INSERT INTO suppressions(address, reason, first_seen, last_seen) "
        "VALUES ('gone@x.org', 'manual', 1, 1)"
    )
    rowids = {r[1]: r[0] for r in conn.execute("SELECT rowid, id FROM messages")}
    conn.close()
    return rowids


def test_a_previous_database_migrates_and_the_reference_client_flow_works_unchanged(
    var_dir, smtp_server
):
    now = time.time()
    rowids = version_5_database(var_dir / "asyncmail.db", now)
    conn = store.db.connect(var_dir / "asyncmail.db")
    assert store.db.schema_version(conn) == store.db.SCHEMA_VERSION
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    moved = {r["id"]: r for r in conn.execute("SELECT rowid, * FROM messages")}
    assert {r["tenant_id"] for r in moved.values()} == {"default"}
    assert {i: r["rowid"] for i, r in moved.items()} == rowids
    statuses = {i: store.messages.get(conn, "default", i, now)["status"] for i in rowids}
    assert statuses == {"queued": "queued", "scheduled": "deferred", "retrying": "deferred",
                        "sending": "sending", "sent": "sent", "reported": "sent",
                        "failed": "error"}  # fmt: skip
    failed = store.messages.get(conn, "default", "failed", now)
    assert [a["outcome"] for a in failed["attempt_log"]] == ["temporary"]
    assert store.suppressions.get(conn, "default", "gone@x.org")["reason"] == "manual"
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE tenant_id = 'default' "
        "AND account_id IS 'old' AND priority = 2 AND sent_ts IS NULL AND error_ts IS NULL "
        "AND ready_at <= 0 ORDER BY ready_at"
    ).fetchall()
    assert "messages_claim" in str(plan)
    outcomes(conn, "default", {"queued": Next.SENT}, now)  # the old account is unreachable
    conn.close()
    # the reference's client flow: [server] api_token, an account, messages, reports to
    # [client] client_sync_url, none of it naming a tenant
    peer = smtp_server()
    token = "reference-token"
    with Upstream(path="/proxy_sync") as upstream:
        stack = Stack(var_dir, port=procs.free_port(), dispatchers=1, api_token=token,
                      client_sync_url=upstream.url)  # fmt: skip
        try:
            stack.start(expect_running=("web", "reporter", "dispatcher-00"))
            auth = {"X-API-Token": token}
            account = {"id": "main", "host": peer.host, "port": peer.port}
            assert requests.post(stack.url + "/account", json=account, headers=auth).ok
            batch = {"messages": [message("ref-1", "main"), message("ref-2", "main")]}
            added = requests.post(stack.url + "/commands/add-messages", json=batch, headers=auth)
            assert added.json() == {"ok": True, "queued": 2, "rejected": []}
            items = upstream.wait_for(
                lambda up: {"ref-1", "ref-2"} <= {i["id"] for i in up.items()} and up.items(),
                timeout=30,
            )
            listed = requests.get(stack.url + "/messages?limit=1000", headers=auth).json()
        finally:
            assert stack.stop() == set()
    mine = {i["id"]: i for i in items}
    assert "tenant_id" not in mine["ref-1"] and mine["ref-1"]["status"] == "sent"
    assert mine["queued"]["status"] == "sent" and mine["sent"]["status"] == "sent"
    assert {"ref-1", "ref-2", "sending", "failed"} <= {m["id"] for m in listed["messages"]}
    assert sorted(r.message()["Subject"] for r in peer.received) == ["ref-1", "ref-2"]
