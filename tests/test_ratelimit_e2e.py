"""Rate limits end to end: real dispatcher processes, one ledger, an aiosmtpd sink.

Three views of the same sends are checked against the windows:
- the ledger's own reservations, exactly (a non-binding day limit makes the ring long enough
  to hold every reservation of the test);
- ``attempts.ts``, the send start the dispatcher records right after its reservation, with
  ATTEMPT_TOLERANCE for the instructions between the two clock reads;
- the sink's receive times.  Each message's receive time is its start plus its SMTP
  transaction time, so a window of the sink can hold more than the limit only by the
  *spread* of those transaction times.  Measured per message, that spread is the tolerance.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.smtp_peers are parameters here)

from __future__ import annotations

import contextlib
import functools
import random
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from common import intake, store, wakeup
from common.ratelimit import Ledger
from dispatcher.attachments import Fetcher
from dispatcher.core import Dispatcher
from dispatcher.smtp import Pool
from tests import procs
from tests.smtp_peers import smtp_server, tls_cert  # noqa: F401
from web.app import create_app

# attempts.ts is read a few Python statements after reserve() returned; 50 ms covers a
# descheduling of the dispatcher between the two reads on a busy two-core test machine.
ATTEMPT_TOLERANCE = 0.05
TOKEN = "e2e-token"
T0 = 1_800_000_000.0


# -- helpers shared with tests/test_fairness.py -------------------------------------------------
def message(message_id: str, account_id: str, **fields) -> dict:
    """A valid message whose recipient names it, so the sink can tell messages apart."""
    return {
        "id": message_id,
        "account_id": account_id,
        "from": "sender@example.com",
        "to": f"{message_id}@example.org",
        "subject": f"message {message_id}",
        "body": "body",
        **fields,
    }


def enqueue(conn, config, items: list[dict]) -> None:
    result = intake.accept_batch(conn, config, items, time.time())
    assert not result.rejected, result.rejected


def received_ids(peer) -> list[str]:
    """Message ids in arrival order."""
    return [r.recipients[0].split("@")[0] for r in list(peer.received)]


def attempts(conn, outcome: str | None = None) -> list[dict]:
    rows = conn.execute("SELECT * FROM attempts ORDER BY id").fetchall()
    return [r for r in rows if outcome is None or r["outcome"] == outcome]


@contextlib.contextmanager
def dispatchers(config, count: int, **settings):
    """``count`` real dispatcher processes on config's var dir, stopped (SIGTERM) at the end."""
    var_dir = config.var_dir
    metrics_dir = config.metrics_dir
    metrics_dir.mkdir(exist_ok=True)
    started = []
    try:
        for n in range(1, count + 1):
            env = procs.service_env(var_dir, config.config_path, **settings)
            env["SUPERVISOR_PROCESS_NAME"] = f"dispatcher-{n:02d}"
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            started.append(procs.start("dispatcher", env, var_dir / f"dispatcher-{n}.log"))
        # each binds its wake-up socket after installing its signal handlers: from then on
        # a SIGTERM is a clean stop, not a kill during start-up
        sockets = [wakeup.wake_dir(config.run_dir) / f"dispatcher-dispatcher-{n:02d}.sock"
                   for n in range(1, count + 1)]  # fmt: skip
        procs.wait_for(lambda: all(s.exists() for s in sockets), message="dispatchers up")
        yield started
    finally:
        codes = [procs.stop(proc) for proc in started]
    assert codes == [0] * count, "a dispatcher did not stop cleanly"


def wait_received(peer, count: int, timeout: float = 40) -> None:
    procs.wait_for(lambda: len(peer.received) >= count, timeout, message=f"{count} messages")


def counter(config, name: str, account_id: str) -> float:
    """A counter summed over every dispatcher process (prometheus multiprocess files)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(config.metrics_dir))
    return registry.get_sample_value(name, {"account_id": account_id}) or 0.0


def max_in_window(times: list[float], seconds: float) -> int:
    """The most ``times`` any half-open interval [a, a + seconds) holds."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t >= times[first] + seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


# -- processes sharing one ledger ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("processes", [3, 5])
def test_dispatchers_keep_the_pace_of_limit_per_second(conn, config, smtp_server, processes):
    """60 messages, limit_per_second=5: all arrive, no one-second window holds more than 5."""
    peer = smtp_server()
    account = peer.account("acct", limit_per_second=5, limit_per_day=1000)
    store.accounts.upsert(conn, account, int(time.time()))
    ids = [f"m{n}" for n in range(60)]
    enqueue(conn, config, [message(i, "acct") for i in ids])
    with dispatchers(config, processes):
        wait_received(peer, 60)
        time.sleep(0.3)  # a duplicate send would arrive now
    assert sorted(received_ids(peer)) == sorted(ids)

    reservations = Ledger(config.ratelimit_dir).starts("acct")
    assert len(reservations) == 60  # one reservation per send, none lost, none extra
    assert max_in_window(reservations, 1.0) == 5

    sent = {a["message_id"]: a["ts"] for a in attempts(conn, "sent")}
    assert sorted(sent) == sorted(ids)
    assert max_in_window(list(sent.values()), 1.0 - ATTEMPT_TOLERANCE) <= 5

    arrival = {r.recipients[0].split("@")[0]: r.ts for r in peer.received}
    transaction = [arrival[i] - sent[i] for i in ids]
    spread = max(transaction) - min(transaction)
    assert min(transaction) >= 0
    assert max_in_window(list(arrival.values()), 1.0 - ATTEMPT_TOLERANCE - spread) <= 5

    deferrals = len(attempts(conn, "deferred"))
    assert deferrals > 0
    assert counter(config, "asyncmail_rate_limited_total", "acct") == deferrals
    assert counter(config, "asyncmail_deferred_total", "acct") == deferrals
    assert counter(config, "asyncmail_sent_total", "acct") == 60


@pytest.mark.slow
def test_limits_changed_through_the_api_apply_to_the_next_send(conn, make_config, smtp_server):
    config = make_config(api_token=TOKEN)
    client = create_app(config).test_client()
    peer = smtp_server()

    def set_limit(per_minute: int) -> None:
        body = {**peer.account("acct"), "limit_per_minute": per_minute}
        answer = client.post("/account", json=body, headers={"X-API-Token": TOKEN})
        assert answer.status_code == 200, answer.get_json()

    set_limit(2)
    enqueue(conn, config, [message(f"a{n}", "acct") for n in range(3)])
    with dispatchers(config, 2):
        wait_received(peer, 2)
        procs.wait_for(lambda: attempts(conn, "deferred"), message="the third held back")
        set_limit(5)  # raised: the next sends go at once, within the same minute
        enqueue(conn, config, [message(f"b{n}", "acct") for n in range(2)])
        wait_received(peer, 4)
        set_limit(4)  # lowered below what the minute already used: the next send waits
        enqueue(conn, config, [message("c0", "acct")])
        procs.wait_for(
            lambda: [a for a in attempts(conn, "deferred") if a["message_id"] == "c0"],
            message="c0 held back by the lowered limit",
        )
        time.sleep(0.3)
    assert sorted(received_ids(peer)) == ["a0", "a1", "b0", "b1"]


# -- in process, with a clock the test moves ---------------------------------------------------
class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_combined_minute_and_second_limits_with_a_stepped_clock(conn, config, smtp_server):
    """Two dispatchers share one ledger; the clock jumps to the next ready row each turn."""
    peer = smtp_server()
    store.accounts.upsert(conn, peer.account("acct", limit_per_second=2, limit_per_minute=5), 0)
    enqueue(conn, config, [message(f"m{n:02d}", "acct") for n in range(12)])
    clock = Clock(T0)
    ledger = Ledger(config.ratelimit_dir, functools.partial(store.attempts.send_starts, conn))
    pair = [
        Dispatcher(
            conn, config, ledger=ledger, pool=Pool(clock=clock), fetcher=Fetcher(config),
            name=f"d{n}", clock=clock, rng=random.Random(n),
        )
        for n in range(2)
    ]  # fmt: skip
    for _ in range(200):
        if len(peer.received) == 12:
            break
        worked = [dispatcher.run_once(clock.t) for dispatcher in pair]
        if not any(worked):  # both idle: jump to the moment the next row is due
            clock.t = min(d.next_ready for d in pair)
    for dispatcher in pair:
        dispatcher.close()
    starts = sorted(a["ts"] for a in attempts(conn, "sent"))
    assert len(starts) == len(peer.received) == 12
    assert starts == [T0, T0, T0 + 1, T0 + 1, T0 + 2] + [T0 + 60] * 2 + [T0 + 61] * 2 + [
        T0 + 62,
        T0 + 120,
        T0 + 120,
    ]
    assert max_in_window(starts, 1.0) == 2
    assert max_in_window(starts, 60.0) == 5
