"""A dispatcher never loops on a failed write: a failed outcome is logged and its message
released; a database that refuses every write makes the process give up (supervisord
restarts it) instead of beating a healthy-looking heartbeat.  Failures come from real
SQLite triggers, not mocks."""

from __future__ import annotations

import logging

import pytest

from common import store
from dispatcher.core import MAX_FAILED_TURNS, Jammed
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, message


@pytest.fixture
def account(conn, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    return peer


def test_a_failed_outcome_write_releases_that_message_only(conn, config, account, caplog):
    enqueue(conn, config, *[message(f"m{i}", "acct") for i in range(3)])
    conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON attempts WHEN NEW.message_id = 'm1' "
        "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    dispatcher = make_dispatcher(conn, config)
    with caplog.at_level(logging.ERROR):
        assert dispatcher.turn() is True
    assert "event=record_failed id=m1" in caplog.text
    assert [row(conn, m)["sent_ts"] for m in ("m0", "m2")] == [int(T0)] * 2
    kept = row(conn, "m1")
    assert kept["lease_owner"] is None and kept["sent_ts"] is None  # released, not jammed
    assert kept["possible_duplicate"] == 1  # the server has a copy: a resend is flagged
    conn.execute("DROP TRIGGER boom")
    dispatcher.turn()  # the next turn goes on as usual
    assert row(conn, "m1")["sent_ts"] is not None
    assert [a["outcome"] for a in attempts(conn, "m1")] == ["sent"]


def test_a_database_refusing_every_write_stops_the_process(conn, config, account):
    beats = []
    dispatcher = make_dispatcher(conn, config, heartbeat=lambda: beats.append(1))
    enqueue(conn, config, message("m0", "acct"))
    conn.execute(
        "CREATE TRIGGER boom BEFORE UPDATE ON messages BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    for _ in range(MAX_FAILED_TURNS - 1):
        assert dispatcher.turn() is False
        dispatcher.beat()
    assert beats == []  # no heartbeat while nothing can be recorded
    with pytest.raises(Jammed):
        dispatcher.turn()
    assert account.handler.attempted == []
