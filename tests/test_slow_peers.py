"""Slow and hostile peers against real ``python -m dispatcher`` processes: no duplicate, no
stall, no jam.  Each scenario is one that broke a promise before (docs/reliability.md)."""

from __future__ import annotations

import signal
import time

import pytest

from common import operations, store
from tests.support import procs
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import start_dispatcher, wait_received
from tests.support.factories import message
from tests.support.hostile import DrippingSource
from tests.support.smtp import Behavior, Gate

pytestmark = pytest.mark.slow


@pytest.fixture
def start(config):
    """start(number, **settings) -> dispatcher-NN as a process; all stopped after the test."""
    started: list = []

    def launch(number: int, **settings):
        started.append(start_dispatcher(config, number, **settings))
        return started[-1]

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        procs.stop(proc)


def queue(conn, config, account_id: str, *ids: str, **fields) -> list[str]:
    items = [message(i, account_id, **fields) for i in ids]
    return enqueue(conn, config, *items, now=time.time())


def log_of(config, number: int) -> str:
    return (config.var_dir / f"dispatcher-{number:02d}.log").read_text()


def test_slow_data_longer_than_the_lease_is_sent_once(conn, config, start, smtp_server):
    """The end of DATA is answered after 4 s, leases last 2 s, two dispatchers: one copy."""
    peer = smtp_server(behavior=Behavior(data_delay=4))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    start(1, lease_seconds=2)
    start(2, lease_seconds=2)
    ids = queue(conn, config, "acct", "m1", "m2")
    procs.wait_for(lambda: all(row(conn, i)["sent_ts"] for i in ids), timeout=40, message="sent")
    assert sorted(r.message()["Subject"] for r in peer.handler.attempted) == ids  # once each
    assert [row(conn, i)["possible_duplicate"] for i in ids] == [0, 0]


def test_a_stalled_holder_cannot_overwrite_the_new_holder(conn, config, start, smtp_server):
    """The holder is frozen past its lease mid-send; the row's next holder keeps it.

    Its copy went out before it froze (the server got the final dot), so the message is
    flagged possible_duplicate, but its late outcome is refused: the new holder's lease
    stands until its own send is over.
    """
    gate = Gate()
    peer = smtp_server(behavior=Behavior(gate=gate))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    stalled = start(1, lease_seconds=2)
    queue(conn, config, "acct", "m1")
    procs.wait_for(lambda: len(peer.handler.attempted) == 1, message="the first copy sent")
    stalled.send_signal(signal.SIGSTOP)
    start(2, lease_seconds=2)
    procs.wait_for(lambda: (row(conn, "m1")["lease_owner"] or "").startswith("dispatcher-02"),
                   message="the lease taken over")  # fmt: skip
    procs.wait_for(lambda: len(peer.handler.attempted) == 2, message="the second copy sent")
    gate.open(0)  # the stalled holder's reply is waiting for it
    stalled.send_signal(signal.SIGCONT)
    procs.wait_for(lambda: [a for a in attempts(conn, "m1") if a["process"] == "dispatcher-01"],
                   message="the stalled holder's attempt")  # fmt: skip
    held = row(conn, "m1")
    assert held["sent_ts"] is None, "the stalled holder's late outcome was applied"
    assert (held["lease_owner"] or "none").startswith("dispatcher-02")  # still the new holder's
    assert held["possible_duplicate"] == 1
    gate.open(1)
    procs.wait_for(lambda: row(conn, "m1")["sent_ts"], message="sent by the new holder")
    assert "event=stale_outcome id=m1" in log_of(config, 1)


def test_dripping_attachments_do_not_stop_ordinary_mail(make_config, start, smtp_server, hostile):
    """Two sources drip a byte a second into both dispatchers: ordinary mail still flows."""
    deadline = 2
    config = make_config(allow_private_attachment_urls=True, attachment_timeout_seconds=deadline)
    conn = store.db.connect(config.database)
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    settings = {"allow_private_attachment_urls": "true", "attachment_timeout_seconds": deadline}
    start(1, **settings)
    start(2, **settings)
    drips = [hostile(DrippingSource, interval=1.0) for _ in range(2)]
    for n, drip in enumerate(drips):  # one each: the second is claimed by the idle dispatcher
        queue(conn, config, "acct", f"drip{n}", attachments=[{"filename": "x", "url": drip.url}])
        procs.wait_for(lambda d=drip: d.requests, message=f"drip {n} fetching")
    ordinary = queue(conn, config, "acct", *[f"m{i}" for i in range(5)])
    wait_received(peer, 5, timeout=3 * deadline)
    assert sorted(peer.subjects()) == ordinary
    for n, drip in enumerate(drips):
        deferred = procs.wait_for(lambda n=n: row(conn, f"drip{n}")["error"] and
                                  row(conn, f"drip{n}"), message="cut at its deadline")  # fmt: skip
        assert deferred["error_ts"] is None and "not fetched within" in deferred["error"]
        assert drip.requests == 1  # not fetched again at once: the message waits its retry
    conn.close()


def test_a_mute_server_leaves_other_accounts_undisturbed(conn, config, start, smtp_server,
                                                          silent_server):  # fmt: skip
    """40 messages for a server that never greets, two dispatchers: another account's
    messages go out within the first failed connection, and the mute account costs one
    connection attempt (and one attempt row) per circuit backoff, not one per message."""
    peer = smtp_server()
    now = int(time.time())
    store.accounts.upsert(conn, "default", peer.account("ok"), now)
    store.accounts.upsert(conn, "default", silent_server.account("mute", timeout=1), now)
    start(1, batch_size_per_account=20)
    start(2, batch_size_per_account=20)
    queue(conn, config, "mute", *[f"mute{i}" for i in range(40)])
    procs.wait_for(lambda: silent_server.accepted, message="a dispatcher stuck connecting")
    queue(conn, config, "ok", *[f"ok{i}" for i in range(10)])
    wait_received(peer, 10, timeout=20)
    assert len(silent_server.accepted) <= 2  # still the first round: one per dispatcher

    def circuit():
        found = [c for c in store.circuits.list_all(conn, time.time(), None) if c["account_id"]]
        return found[0] if found and found[0]["failures"] >= 2 else None

    opened = procs.wait_for(circuit, timeout=30, message="a second failed probe")
    tries = attempts(conn, outcome="temporary")
    assert len(tries) == len(silent_server.accepted) <= opened["failures"] + 1
    unsent = conn.execute("SELECT count(*) AS n FROM messages WHERE account_id = 'mute' "
                          "AND sent_ts IS NULL AND error_ts IS NULL").fetchone()["n"]  # fmt: skip
    assert unsent == 40  # all waiting, none lost


def test_purging_an_account_mid_send_jams_nothing(conn, config, start, smtp_server,
                                                  silent_server):  # fmt: skip
    peer = smtp_server()
    now = int(time.time())
    store.accounts.upsert(conn, "default", peer.account("ok"), now)
    store.accounts.upsert(conn, "default", silent_server.account("gone", timeout=2), now)
    proc = start(1)
    queue(conn, config, "gone", *[f"gone{i}" for i in range(10)])
    procs.wait_for(lambda: silent_server.accepted, message="sending to the account")
    done = operations.delete_account(conn, "default", "gone", purge=True, now=time.time())
    assert len(done.in_flight) == 10  # held by the dispatcher: left to it, not deleted
    queue(conn, config, "ok", *[f"ok{i}" for i in range(5)])
    wait_received(peer, 5, timeout=20)

    def settled():
        counts = store.messages.status_counts(conn, time.time())
        return counts["sending"] == 0 and counts["queued"] == 0 and counts

    counts = procs.wait_for(settled, timeout=30, message="nothing left in sending")
    failed = conn.execute("SELECT error FROM messages WHERE error_ts IS NOT NULL").fetchall()
    assert failed and all("'gone' was deleted" in f["error"] for f in failed)
    assert counts["sent"] == 5 and counts["error"] + counts["deferred"] == 10
    assert proc.poll() is None and "turn_failed" not in log_of(config, 1)
