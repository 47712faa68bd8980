"""Leases that hold while work is done, and fencing: only the holder's outcome is applied.

Store-level fencing on a real database, the guard cutting a real silent socket, and an
in-process dispatcher whose lease is renewed while a real server takes longer than the
lease to answer.  The multi-process versions are in tests/test_slow_peers.py.
"""

from __future__ import annotations

import socket
import threading
import time

from common import store
from common.enums import Next, Outcome
from common.guard import Guard
from common.store.claims import Attempt, Transition
from dispatcher import pool as pool_module
from dispatcher.pool import Endpoint, Pool
from tests.support import procs
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, message
from tests.support.smtp import Behavior

M1 = ("default", "m1")  # the key of message m1


def two_holders(conn, config):
    """m1 claimed by 'a', whose lease ran out, then by 'b'."""
    store.accounts.upsert(conn, "default", {"id": "acct", "host": "127.0.0.1", "port": 9}, int(T0))
    enqueue(conn, config, message("m1", "acct"))
    store.claims.claim(conn, "a", T0, 10, 50, False)
    taken = store.claims.claim(conn, "b", T0 + 11, 10, 50, False)
    assert [m["id"] for m in taken.messages] == ["m1"]


def outcome(state: Next, outcome: Outcome, now: float, **kwargs) -> Transition:
    return Transition(Attempt("m1", "acct", now - 1, outcome, 250, "done"), state, now, **kwargs)


def test_a_stale_holders_outcome_is_refused_and_flagged(conn, config):
    two_holders(conn, config)
    sent_by_a = outcome(Next.SENT, Outcome.SENT, T0 + 12)
    assert store.claims.record(conn, [sent_by_a], "dispatcher-a", "a") == [sent_by_a]
    got = row(conn, "m1")
    assert got["sent_ts"] is None and got["lease_owner"] == "b"  # b's lease is untouched
    assert got["possible_duplicate"] == 1  # a's copy may have reached the server
    assert [a["process"] for a in attempts(conn, "m1")] == ["dispatcher-a"]  # it happened
    sent_by_b = outcome(Next.SENT, Outcome.SENT, T0 + 13)
    assert store.claims.record(conn, [sent_by_b], "dispatcher-b", "b") == []
    assert row(conn, "m1")["sent_ts"] == int(T0 + 13)


def test_a_stale_retry_neither_frees_the_row_nor_flags_it(conn, config):
    two_holders(conn, config)
    retry = outcome(Next.RETRY, Outcome.TEMPORARY, T0 + 12, ready_at=T0 + 70, error="451")
    assert store.claims.record(conn, [retry], "dispatcher-a", "a") == [retry]
    got = row(conn, "m1")
    assert (got["lease_owner"], got["error"], got["attempts"]) == ("b", None, 0)
    assert got["possible_duplicate"] == 0  # nothing was delivered by a


def test_release_and_renewal_are_fenced_too(conn, config):
    two_holders(conn, config)
    store.claims.release(conn, [M1], "a", T0 + 12)
    assert store.claims.extend_lease(conn, [M1], "a", T0 + 99) == [M1]  # lost
    assert row(conn, "m1")["lease_owner"] == "b"
    assert store.claims.extend_lease(conn, [M1], "b", T0 + 99) == []
    assert row(conn, "m1")["lease_expires"] == T0 + 99


def test_the_guard_cuts_a_silent_connection_at_its_deadline(silent_server):
    guard = Guard()
    sock = socket.create_connection((silent_server.host, silent_server.port), timeout=60)
    with guard.within(0.3, "too slow"):
        guard.track(sock)
        assert sock.recv(1) == b""  # shut down by the guard: the 60 s timeout never fires
    assert guard.cut == "too slow"
    sock.close()
    guard.close()


def test_an_outer_deadline_wins_over_a_later_inner_one(silent_server):
    guard = Guard()
    sock = socket.create_connection((silent_server.host, silent_server.port), timeout=60)
    with guard.within(0.3, "outer"), guard.within(30, "inner"):
        guard.track(sock)
        sock.recv(1)
    assert guard.cut == "outer"
    sock.close()
    guard.close()


def test_the_lease_is_renewed_while_a_slow_server_answers(conn, make_config, smtp_server):
    """A 1 s lease, a server that answers the end of DATA after 2.5 s: nobody else gets it."""
    config = make_config(lease_seconds=1)
    peer = smtp_server(behavior=Behavior(data_delay=2.5))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    enqueue(conn, config, message("m1", "acct"), now=time.time())
    holder = make_dispatcher(conn, config, clock=time.time, name="holder")
    sending = threading.Thread(target=holder.run_once, args=(time.time(),))
    sending.start()
    other = store.db.connect(config.database)
    procs.wait_for(lambda: peer.handler.attempted, message="the message is with the server")
    first = row(other, "m1")["lease_expires"]
    # renewed at a moment when the first lease had already run out
    procs.wait_for(lambda: row(other, "m1")["lease_expires"] > first + 1, message="renewed")
    assert store.claims.claim(other, "rival", time.time(), 1, 50, False).messages == []
    sending.join(10)
    assert len(peer.received) == 1 and row(other, "m1")["sent_ts"] is not None
    other.close()
    holder.close()


def test_shutdown_quits_every_pooled_connection_within_one_deadline(smtp_server, monkeypatch):
    monkeypatch.setattr(pool_module, "QUIT_SECONDS", 0.5)
    peer = smtp_server(behavior=Behavior(quit_delay=3600))  # never answers QUIT, in effect
    pool = Pool()
    endpoint = Endpoint(host=peer.host, port=peer.port, user=None, password=None,
                        implicit_tls=False, starttls=False, timeout=30, ttl=300)  # fmt: skip
    sent = pool.send("acct", endpoint, "a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nhi")
    assert sent.outcome is Outcome.SENT
    pool.close()  # without its deadline: the account's 30 s timeout
    assert pool.guard.cut == "QUIT not answered within 0.5 s"
    pool.guard.close()
