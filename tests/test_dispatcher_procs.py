"""Real ``python -m dispatcher`` processes on one database: no double sends, no lost rows."""

# ruff: noqa: F811  (pytest fixtures imported from tests.smtp_peers are parameters here)

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from common import intake, store
from common.config import load_config
from tests import procs
from tests.smtp_peers import Behavior, smtp_server, tls_cert  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture
def short_var(var_dir):
    """A var dir with a short path: wake-up socket paths must fit AF_UNIX's 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="am-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service(short_var, tmp_path):
    """start(count, **settings) -> dispatcher processes; a connection; all stopped after."""
    var_dir = short_var
    ini = tmp_path / "asyncmail.ini"
    ini.touch()
    started: list = []
    conn = store.db.connect(var_dir / "asyncmail.db")

    class Service:
        def __init__(self):
            self.conn = conn
            self.config = load_config(ini, environ={"ASYNCMAIL_VAR_DIR": str(var_dir)})

        def start(self, count: int = 1, **settings) -> list:
            env = procs.service_env(var_dir, ini, **settings)
            for _ in range(count):
                log = tmp_path / f"dispatcher-{len(started)}.log"
                started.append(procs.start("dispatcher", env, log))
            return started[-count:]

        def enqueue(self, count: int, prefix: str = "m") -> list[str]:
            items = [
                {"id": f"{prefix}{i}", "account_id": "acct", "from": "s@example.com",
                 "to": "r@example.com", "subject": f"{prefix}{i}", "body": "hi"}
                for i in range(count)
            ]  # fmt: skip
            result = intake.accept_batch(conn, self.config, items, time.time())
            return result.queued

        def unsent(self) -> int:
            return conn.execute(
                "SELECT count(*) AS n FROM messages WHERE sent_ts IS NULL"
            ).fetchone()["n"]

    yield Service()
    for proc in started:
        procs.stop(proc)
    conn.close()


def subjects(peer) -> list[str]:
    return [r.message()["Subject"] for r in peer.received]


@pytest.mark.parametrize("dispatchers", [2, 4])
def test_many_dispatchers_never_send_a_message_twice(service, smtp_server, dispatchers):
    peer = smtp_server()
    store.accounts.upsert(service.conn, peer.account(), int(time.time()))
    running = service.start(dispatchers, batch_size_per_account=10)
    ids = service.enqueue(400)
    procs.wait_for(lambda: service.unsent() == 0, timeout=60, message="all sent")
    got = subjects(peer)
    assert sorted(got) == sorted(ids)  # each exactly once
    owners = {r["process"] for r in service.conn.execute("SELECT DISTINCT process FROM attempts")}
    assert len(owners) >= 2  # the work really was shared
    assert [procs.stop(p) for p in running] == [0] * dispatchers


def test_killed_dispatcher_loses_nothing(service, smtp_server):
    peer = smtp_server(behavior=Behavior(data_delay=0.2))
    store.accounts.upsert(service.conn, peer.account(), int(time.time()))
    [victim] = service.start(1, lease_seconds=2)
    ids = service.enqueue(8)
    procs.wait_for(lambda: len(peer.received) >= 1, message="first delivery")
    held = service.conn.execute(
        "SELECT count(*) AS n FROM messages WHERE lease_owner IS NOT NULL AND sent_ts IS NULL"
    ).fetchone()["n"]
    assert held > 0  # it holds a claim when it dies
    procs.stop(victim, signal.SIGKILL)
    service.start(1, lease_seconds=2)
    procs.wait_for(lambda: service.unsent() == 0, timeout=30, message="taken over")
    delivered = subjects(peer)
    assert set(delivered) == set(ids)
    flagged = {
        r["id"]
        for r in service.conn.execute("SELECT id FROM messages WHERE possible_duplicate = 1")
    }
    twice = {i for i in ids if delivered.count(i) > 1}
    assert twice <= flagged  # every resend is visible
    assert len(flagged) <= 8  # and the flag is bounded by the in-flight window


def test_sigterm_finishes_the_message_in_hand_and_releases_the_rest(service, smtp_server):
    peer = smtp_server(behavior=Behavior(data_delay=1.0))
    store.accounts.upsert(service.conn, peer.account(), int(time.time()))
    [proc] = service.start(1)
    service.enqueue(5)
    procs.wait_for(lambda: peer.handler.attempted, message="a send in progress")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    rows = service.conn.execute("SELECT id, sent_ts, lease_owner FROM messages").fetchall()
    assert all(r["lease_owner"] is None for r in rows)  # nothing stuck in 'sending'
    assert [r["id"] for r in rows if r["sent_ts"]] == ["m0"]
    assert len(peer.received) == 1


def test_enqueue_wakes_an_idle_dispatcher(service, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(service.conn, peer.account(), int(time.time()))
    service.start(1, send_interval_seconds=60)
    procs.wait_for(
        lambda: store.heartbeats.list_all(service.conn, time.time()), message="heartbeat"
    )
    time.sleep(0.3)  # let it reach its idle wait
    service.enqueue(1)
    procs.wait_for(lambda: peer.received, timeout=10, message="woken, not polled")


def test_sigusr1_wakes_an_idle_dispatcher(service, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(service.conn, peer.account(), int(time.time()))
    (dispatcher,) = service.start(1, send_interval_seconds=300)
    procs.wait_for(
        lambda: store.heartbeats.list_all(service.conn, time.time()), message="heartbeat"
    )
    time.sleep(0.3)  # let it reach its idle wait
    payload = {"id": "quiet", "from": "s@example.com", "to": "r@example.com",
               "subject": "quiet", "body": "hi"}  # fmt: skip
    quiet = store.messages.NewMessage("quiet", "acct", 2, payload, None)
    store.messages.enqueue(service.conn, [quiet], time.time())  # stored without a wake-up datagram
    time.sleep(1.0)
    assert peer.received == []  # asleep: only the poll interval (300 s) would find it
    dispatcher.send_signal(signal.SIGUSR1)
    procs.wait_for(lambda: peer.received, timeout=10, message="woken by SIGUSR1")


def test_unopenable_database_exits_with_one_line(var_dir, tmp_path):
    env = procs.service_env(var_dir, None, db_path="/proc/no/such/dir/asyncmail.db")
    log = tmp_path / "dispatcher.log"
    proc = procs.start("dispatcher", env, log)
    assert proc.wait(20) == 1
    procs.stop(proc)
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and "event=database_unavailable" in lines[0]
