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


def test_only_the_message_in_hand_is_flagged(conn, make_config, tmp_path):
    """m0 sent and noted, m1 refused for good, m2 going out when the process died: only m2
    may have a copy with the server."""
    enqueue(conn, make_config(smtp_host="127.0.0.1"), *(message(f"m{n}") for n in range(4)))
    store.claims.claim(conn, "d:1", T0, 60, 10, True)
    dead = journal.Journal(tmp_path, "d:1")
    dead.sending(("default", "m0"))
    dead.note(sent("m0"))
    dead.sending(("default", "m1"))
    refused = Attempt("m1", None, T0, Outcome.PERMANENT, 550, "no such user")
    dead.note(Transition(refused, Next.ERROR, T0, error="550 no such user"))
    dead.sending(("default", "m2"))
    dead.close(keep=True)

    assert journal.recover(conn, tmp_path, "d-2") == 1  # m0's outcome
    assert row(conn, "m0")["sent_ts"] is not None
    assert [row(conn, f"m{n}")["maybe_sent"] for n in range(4)] == [0, 0, 1, 0]
    taken = store.claims.claim(conn, "d:2", T0 + 61, 60, 10, True)  # d:1's leases ran out
    flagged = {m["id"] for m in taken.messages if row(conn, m["id"])["possible_duplicate"]}
    assert [m["id"] for m in taken.messages] == ["m1", "m2", "m3"] and flagged == {"m2"}


def test_a_message_in_hand_taken_already_is_flagged_at_once(conn, make_config, tmp_path):
    enqueue(conn, make_config(smtp_host="127.0.0.1"), message("m0"))
    store.claims.claim(conn, "d:1", T0, 60, 10, True)
    dead = journal.Journal(tmp_path, "d:1")
    dead.sending(("default", "m0"))
    dead.close(keep=True)
    store.claims.claim(conn, "d:2", T0 + 61, 60, 10, True)  # replayed late: d:2 has it

    journal.recover(conn, tmp_path, "d-2")
    assert row(conn, "m0")["possible_duplicate"] == 1 and row(conn, "m0")["lease_owner"] == "d:2"


def test_a_partial_send_is_kept_like_a_sent_one(tmp_path):
    """Some recipients have it, the rest got a 452: a replay must not send it to them again."""
    kept = journal.Journal(tmp_path, "d:1")
    kept.sending(("default", "m"))
    partial = Attempt("m", None, T0, Outcome.TEMPORARY, 452, "too many recipients")
    kept.note(Transition(partial, Next.RETRY, T0, ready_at=T0 + 60, rcpt_done=["a@b.org"]))
    lines = kept.path.read_bytes().splitlines()
    assert journal.decode(lines[0]) == ("default", "m")
    assert journal.decode(lines[1]).rcpt_done == ["a@b.org"]
    kept.close()
