"""The Message-ID: chosen once at intake, stored, repeated by every attempt of the message."""

from __future__ import annotations

import re

import apsw
import pytest

from common import store
from common.store.db import MIGRATIONS, legacy_message_id
from tests.support.db import enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, Clock, message
from tests.support.smtp import Behavior

GENERATED = re.compile(r"^<(?P<ms>[0-9a-f]+)\.[0-9a-f]{20}@(?P<domain>[a-z0-9.-]+)>$")


@pytest.fixture
def config(make_config):
    """A default [smtp] account, so messages need no account_id (nothing is sent to it)."""
    return make_config(smtp_host="127.0.0.1")


def header(conn, message_id: str) -> str:
    return store.messages.get(conn, "default", message_id, T0)["message_id_header"]


def test_generated_from_the_senders_domain_and_unique(conn, config):
    enqueue(
        conn,
        config,
        message("a", **{"from": "Shop <NoReply@Shop.Example.COM>"}),
        message("b", **{"from": "noreply@shop.example.com"}),
    )
    first, second = header(conn, "a"), header(conn, "b")
    assert GENERATED.match(first)["domain"] == "shop.example.com"
    assert GENERATED.match(second)["domain"] == "shop.example.com"
    assert first != second
    assert int(GENERATED.match(first)["ms"], 16) == int(T0 * 1000)  # time-ordered: see why


def test_configured_domain_wins_over_the_senders(conn, make_config):
    config = make_config(smtp_host="127.0.0.1", message_id_domain="mx.relay.example.net")
    enqueue(conn, config, message("a"))
    assert GENERATED.match(header(conn, "a"))["domain"] == "mx.relay.example.net"


def test_a_client_message_id_is_kept_as_given(conn, config):
    enqueue(conn, config, {**message("a"), "message_id": "<order-17@app.example>"})
    enqueue(conn, config, {**message("b"), "message_id": "order-18@app.example"})
    assert header(conn, "a") == "<order-17@app.example>"
    assert header(conn, "b") == "<order-18@app.example>"  # brackets added, nothing else


def test_a_replacement_keeps_the_generated_message_id(conn, config):
    enqueue(conn, config, message("a", subject="first"))
    generated = header(conn, "a")
    enqueue(conn, config, message("a", subject="second"), now=T0 + 1)
    assert header(conn, "a") == generated  # an earlier attempt may have been delivered
    enqueue(conn, config, {**message("a"), "message_id": "<own@app.example>"}, now=T0 + 2)
    assert header(conn, "a") == "<own@app.example>"
    enqueue(conn, config, message("a"), now=T0 + 3)
    assert GENERATED.match(header(conn, "a")) and header(conn, "a") != generated


def test_every_attempt_carries_the_stored_message_id(conn, config, smtp_server):
    peer = smtp_server(behavior=Behavior(data_reply="451 4.3.0 try again later"))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct"))
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    dispatcher.run_once(T0)  # 451: retried later
    peer.handler.behavior.data_reply = "250 OK"
    clock.t = row(conn, "m1")["ready_at"] + 1
    dispatcher.run_once(clock.t)
    dispatcher.close()

    assert row(conn, "m1")["sent_ts"] is not None
    ids = [r.message()["Message-ID"] for r in peer.handler.attempted]
    assert len(ids) == 2 and set(ids) == {header(conn, "m1")}


def test_migration_gives_earlier_rows_the_message_id_they_were_sent_with(tmp_path):
    conn = apsw.Connection(str(tmp_path / "old.db"))
    conn.row_trace = store.db._row_as_dict
    for number, sql in enumerate(MIGRATIONS[:2]):  # a database of the previous release
        conn.execute(sql)
        conn.execute(f"PRAGMA user_version={number + 1}")
    insert = (
        "INSERT INTO messages (id, payload, created_at, updated_at, ready_at, enqueued_at) "
        "VALUES (?, ?, 0, 0, 0, 0)"  # a database of the previous release: no tenants
    )
    conn.execute(insert, ("plain", '{"id": "plain"}'))
    conn.execute(insert, ("own", '{"id": "own", "message_id": "x@app.example"}'))

    store.db.migrate_schema(conn)

    assert row(conn, "plain")["message_id_header"] == legacy_message_id("plain", None)
    assert legacy_message_id("plain", None).endswith("@asyncmail>")  # what mime.py derived
    assert row(conn, "own")["message_id_header"] == "<x@app.example>"
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE message_id_header = ?", ("<x>",)
    ).fetchall()
    assert "messages_message_id_header" in str(plan)  # a bounce finds its message by index
    conn.close()
