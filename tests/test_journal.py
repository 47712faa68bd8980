"""The send journal: what a dispatcher sent but had not committed survives its SIGKILL."""

from __future__ import annotations

from common import store
from common.enums import Next, Outcome
from common.store.claims import Attempt, Transition
from dispatcher import journal
from tests.support.db import enqueue, row
from tests.support.factories import T0, message


def sent(message_id: str, at: float = T0) -> Transition:
    attempt = Attempt(message_id, None, at, Outcome.SENT, 250, "2.0.0 queued", 0.001)
    return Transition(attempt, Next.SENT, at + 0.001, refused={"x@y.org": [550, "no"]})


def test_a_line_reads_back_as_the_transition_it_was():
    partial = Transition(
        Attempt("m", "acct", T0, Outcome.UNCERTAIN, None, "lost", 0.5, tenant_id="shop"),
        Next.RETRY,
        T0 + 1,
        ready_at=T0 + 61,
        error="lost",
        possible_duplicate=True,
        rcpt_done=["a@b.org"],
    )
    for t in (sent("m"), partial):
        assert journal.decode(journal.encode(t)) == t


def test_only_what_may_have_delivered_is_kept(config, tmp_path):
    kept = journal.Journal(tmp_path, "d:1")
    refused = Transition(Attempt("p", None, T0, Outcome.PERMANENT, 550, "no"), Next.ERROR, T0)
    kept.note(refused)
    assert kept.path.read_bytes() == b""
    kept.note(sent("m"))
    assert kept.path.read_bytes().count(b"\n") == 1
    kept.clear()
    assert kept.path.read_bytes() == b""
    kept.close()
    assert not kept.path.exists()


def test_a_dead_holders_sends_are_recorded_and_a_live_ones_left(conn, make_config, tmp_path):
    enqueue(conn, make_config(smtp_host="127.0.0.1"), *(message(f"m{n}") for n in range(3)))
    store.claims.claim(conn, "d:1", T0, 60, 10, True)
    dead = journal.Journal(tmp_path, "d:1")
    for message_id in ("m0", "m1"):
        dead.note(sent(message_id))
    live = journal.Journal(tmp_path, "d:2")
    live.note(sent("m2"))
    store.claims.claim(conn, "d:3", T0 + 61, 60, 10, True)  # the leases ran out: d:3 took them
    with store.db.write(conn):  # ... except m0, still leased to d:1 (say it was renewed)
        conn.execute("UPDATE messages SET lease_owner = 'd:1' WHERE id = 'm0'")
    dead.close(keep=True)  # d:1 dies with outcomes uncommitted: its lock goes, its journal stays

    assert journal.recover(conn, tmp_path, "d-3") == 1
    assert row(conn, "m0")["sent_ts"] is not None and row(conn, "m0")["lease_owner"] is None
    assert row(conn, "m0")["refused"] == '{"x@y.org": [550, "no"]}'
    taken = row(conn, "m1")  # d:3 holds it now: left alone, but a copy went out
    assert taken["sent_ts"] is None and taken["possible_duplicate"] == 1
    assert row(conn, "m2")["sent_ts"] is None  # d:2 lives: its journal is not touched
    assert not dead.path.exists() and live.path.exists()
    assert journal.recover(conn, tmp_path, "d-3") == 0  # nothing is replayed twice
    live.close()
