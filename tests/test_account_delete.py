"""Deleting an account at any moment: reports outlive it, purge never pulls a row from under
a dispatcher.  Real SMTP servers, a real proxy_sync upstream, the real Reporter."""

from __future__ import annotations

from common import intake, operations, store
from reporter.client import SyncClient
from reporter.reporter import Reporter
from tests.support.db import enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, message
from tests.support.upstream import Upstream


def test_reports_outlive_their_account(conn, make_config, smtp_server):
    """The upstream is down when the account goes: its reports still arrive, with its id."""
    upstream = Upstream().up()
    config = make_config(client_sync_url=upstream.url, delivery_report_retention_seconds=60)
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account("acme"), int(T0))
    ids = enqueue(conn, config, *[message(f"m{i}", "acme") for i in range(3)])
    make_dispatcher(conn, config).run_once(T0)
    assert len(peer.received) == 3
    upstream.down()
    reporter = Reporter(config, conn, T0, make_client=lambda c: SyncClient.from_config(c))
    assert reporter.run_once(T0) is False  # the report is not out
    done = operations.delete_account(conn, "default", "acme", purge=False, now=T0 + 1)
    assert (done.purged, done.in_flight, done.awaiting_report) == (0, [], 3)
    assert store.accounts.list_all(conn, "default") == []  # gone for every reader
    upstream.up()
    reporter.run_once(reporter.stream().retry_at)
    items = upstream.wait_for_items(3)
    assert sorted(i["id"] for i in items) == ids
    assert {i["account_id"] for i in items} == {"acme"} and {i["status"] for i in items} == {"sent"}
    # reported and past retention: the messages go, and the tombstone with them
    reporter.run_once(T0 + 3600)
    assert conn.execute("SELECT count(*) AS n FROM accounts").fetchone()["n"] == 0
    reporter.close()
    upstream.down()


def test_purge_leaves_rows_a_dispatcher_holds(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account("acme"), int(T0))
    enqueue(conn, config, *[message(f"m{i}", "acme") for i in range(3)])
    held = store.claims.claim(conn, "dispatcher-01:1", T0, 120, 2, False)
    assert [m["id"] for m in held.messages] == ["m0", "m1"]
    done = operations.delete_account(conn, "default", "acme", purge=True, now=T0 + 1)
    assert (done.purged, sorted(done.in_flight)) == (1, ["m0", "m1"])
    assert row(conn, "m2") is None and row(conn, "m0")["lease_owner"] == "dispatcher-01:1"
    refused = intake.accept_batch(conn, config, "default", [message("new", "acme")], T0 + 2)
    assert "unknown account_id 'acme'" in refused.rejected[0]["reason"]
    store.claims.release(
        conn, [("default", "m0"), ("default", "m1")], "dispatcher-01:1", T0 + 2
    )  # its outcome: later
    make_dispatcher(conn, config).run_once(T0 + 3)  # the next claim finds the account gone
    for message_id in ("m0", "m1"):
        failed = row(conn, message_id)
        assert failed["error_ts"] is not None and "'acme' was deleted" in failed["error"]
    assert peer.handler.attempted == []


def test_a_deleted_account_comes_back_when_created_again(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account("acme", password="old"), int(T0))
    enqueue(conn, config, message("m1", "acme"))
    make_dispatcher(conn, config).run_once(T0)  # sent, report not out
    operations.delete_account(conn, "default", "acme", purge=False, now=T0)
    assert store.accounts.get(conn, "default", "acme") is None
    assert conn.execute("SELECT password FROM accounts").fetchone()["password"] is None
    store.accounts.upsert(conn, "default", peer.account("acme"), int(T0 + 5))
    assert [a["id"] for a in store.accounts.list_all(conn, "default")] == ["acme"]
    assert row(conn, "m1")["sent_ts"] is not None  # its history is still there
