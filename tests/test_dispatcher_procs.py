"""Real ``python -m dispatcher`` processes on one database: no double sends, no lost rows."""

from __future__ import annotations

import signal
import time

import pytest

from common import store
from tests.support import procs
from tests.support.db import enqueue
from tests.support.dispatchers import start_dispatcher
from tests.support.factories import message
from tests.support.smtp import Behavior, Gate

pytestmark = pytest.mark.slow

ASLEEP = 300  # send_interval_seconds of the wake-up tests: the poll cannot explain a quick send


@pytest.fixture
def start(config):
    """start(count, **settings) -> that many more dispatcher processes; all stopped after."""
    started: list = []

    def launch(count: int = 1, **settings) -> list:
        for _ in range(count):
            started.append(start_dispatcher(config, len(started), **settings))
        return started[-count:]

    yield launch
    for proc in started:
        procs.stop(proc)


def queue(conn, config, count: int) -> list[str]:
    """``count`` messages for account 'acct', ready now for the real clock of the processes."""
    items = [message(f"m{i}", "acct") for i in range(count)]
    return enqueue(conn, config, *items, now=time.time())


def unsent(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM messages WHERE sent_ts IS NULL").fetchone()["n"]


def idle(proc) -> bool:
    """The dispatcher sleeps in its wait for a wake-up (it has talked to no SMTP server yet)."""
    return procs.sleeping_in_select(proc.pid)


@pytest.mark.parametrize("dispatchers", [2, 4])
def test_many_dispatchers_never_send_a_message_twice(conn, config, start, smtp_server, dispatchers):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    running = start(dispatchers, batch_size_per_account=10)
    ids = queue(conn, config, 400)
    procs.wait_for(lambda: unsent(conn) == 0, timeout=60, message="all sent")
    assert sorted(peer.subjects()) == sorted(ids)  # each exactly once
    owners = {r["process"] for r in conn.execute("SELECT DISTINCT process FROM attempts")}
    assert len(owners) >= 2  # the work really was shared
    assert [procs.stop(p) for p in running] == [0] * dispatchers


def test_killed_dispatcher_loses_nothing(conn, config, start, smtp_server):
    peer = smtp_server(behavior=Behavior(data_delay=0.2))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    [victim] = start(1, lease_seconds=2)
    ids = queue(conn, config, 8)
    procs.wait_for(lambda: len(peer.received) >= 1, message="first delivery")
    held = conn.execute(
        "SELECT count(*) AS n FROM messages WHERE lease_owner IS NOT NULL AND sent_ts IS NULL"
    ).fetchone()["n"]
    assert held > 0  # it holds a claim when it dies
    procs.stop(victim, signal.SIGKILL)
    start(1, lease_seconds=2)
    procs.wait_for(lambda: unsent(conn) == 0, timeout=30, message="taken over")
    delivered = peer.subjects()
    assert set(delivered) == set(ids)
    flagged = {r["id"] for r in conn.execute("SELECT id FROM messages WHERE possible_duplicate")}
    twice = {i for i in ids if delivered.count(i) > 1}
    assert twice <= flagged  # every resend is visible
    assert len(flagged) <= 8  # and the flag is bounded by the in-flight window


def test_what_a_killed_dispatcher_sent_is_not_sent_again(conn, config, start, smtp_server):
    """Killed with five messages accepted but their outcomes not committed yet (they go in
    groups): its journal records them, so only the message in hand may go twice."""
    gate = Gate()
    peer = smtp_server(behavior=Behavior(gate=gate))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    for index in range(5):
        gate.open(index)  # the sixth message's reply is held: it is in hand when the kill comes
    [victim] = start(1, lease_seconds=2)
    ids = queue(conn, config, 8)
    procs.wait_for(lambda: len(peer.handler.attempted) == 6, message="the sixth in hand")
    procs.stop(victim, signal.SIGKILL)
    in_hand = peer.handler.attempted[5].message()["Subject"]
    # the five go in one group, committed once 20 ms passed: a slow host may have done it
    committed = conn.execute("SELECT count(*) AS n FROM messages WHERE sent_ts").fetchone()["n"]
    gate.open_all()
    start(1, lease_seconds=2)
    procs.wait_for(lambda: unsent(conn) == 0, timeout=30, message="taken over")
    log = (config.var_dir / "dispatcher-01.log").read_text()
    assert f"applied={5 - committed} " in log  # the journal, not a resend, recorded the rest
    delivered = peer.subjects()
    assert set(delivered) == set(ids)
    twice = {i for i in ids if delivered.count(i) > 1}
    assert twice <= {in_hand}  # without the journal, the five accepted ones would go again
    flagged = {r["id"] for r in conn.execute("SELECT id FROM messages WHERE possible_duplicate")}
    assert twice <= flagged


def test_sigterm_finishes_the_message_in_hand_and_releases_the_rest(
    conn, config, start, smtp_server
):
    peer = smtp_server(behavior=Behavior(data_delay=1.0))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    [proc] = start(1)
    queue(conn, config, 5)
    procs.wait_for(lambda: peer.handler.attempted, message="a send in progress")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    rows = conn.execute("SELECT id, sent_ts, lease_owner FROM messages").fetchall()
    assert all(r["lease_owner"] is None for r in rows)  # nothing stuck in 'sending'
    assert [r["id"] for r in rows if r["sent_ts"]] == ["m0"]
    assert len(peer.received) == 1


def test_enqueue_wakes_an_idle_dispatcher(conn, config, start, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    [proc] = start(1, send_interval_seconds=ASLEEP)
    # asleep in its wait: the claim found nothing, and only a wake-up ends the wait early
    procs.wait_for(lambda: idle(proc), message="the dispatcher idle in its wait")
    queue(conn, config, 1)
    procs.wait_for(lambda: peer.received, timeout=10, message="woken, not polled")


def test_sigusr1_wakes_an_idle_dispatcher(conn, config, start, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    [proc] = start(1, send_interval_seconds=ASLEEP)
    procs.wait_for(lambda: idle(proc), message="the dispatcher idle in its wait")
    quiet = store.messages.NewMessage(
        "quiet", "acct", 2, message("quiet", "acct"), None, "<q@x.example>"
    )
    store.messages.enqueue(
        conn, "default", [quiet], time.time()
    )  # stored without a wake-up datagram
    assert idle(proc) and peer.received == []  # still asleep: nothing told it
    proc.send_signal(signal.SIGUSR1)
    procs.wait_for(lambda: peer.received, timeout=10, message="woken by SIGUSR1")


def test_unopenable_database_exits_with_one_line(var_dir, tmp_path):
    env = procs.service_env(var_dir, None, db_path="/proc/no/such/dir/asyncmail.db")
    log = tmp_path / "dispatcher.log"
    proc = procs.start("dispatcher", env, log)
    assert proc.wait(20) == 1
    procs.stop(proc)
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and "event=database_unavailable" in lines[0]


def test_a_long_send_within_its_deadline_keeps_the_heartbeat_fresh(
    conn, config, start, smtp_server
):
    """The lease renewal beats while one slow end-of-DATA holds the main thread."""
    peer = smtp_server(behavior=Behavior(data_delay=8.0))
    store.accounts.upsert(conn, "default", peer.account(), int(time.time()))
    start(1, lease_seconds=2)  # renewed every 0.5 s
    queue(conn, config, 1)
    procs.wait_for(lambda: peer.handler.attempted, message="the message in DATA")

    def beat() -> float:
        rows = store.heartbeats.list_all(conn, time.time())
        return max(r["ts"] for r in rows if r["kind"] == "dispatcher")

    began = beat()
    procs.wait_for(lambda: beat() >= began + 2 and not peer.received, timeout=6,
                   message="a heartbeat during the send")  # fmt: skip
