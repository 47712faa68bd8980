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

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from common import store
from common.ratelimit import Ledger
from tests.support import procs
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import dispatchers, make_dispatcher, wait_received
from tests.support.factories import T0, Clock, message
from web.app import create_app

# attempts.ts is read a few Python statements after reserve() returned; 50 ms covers a
# descheduling of the dispatcher between the two reads on a busy two-core test machine.
ATTEMPT_TOLERANCE = 0.05
TOKEN = "e2e-token"


def counter(config, name: str, account_id: str) -> float:
    """A counter summed over every dispatcher process (prometheus multiprocess files)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(config.metrics_dir))
    labels = {"tenant_id": "default", "account_id": account_id}
    return registry.get_sample_value(name, labels) or 0.0


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
    store.accounts.upsert(conn, "default", account, int(time.time()))
    ids = [f"m{n}" for n in range(60)]
    enqueue(conn, config, *[message(i, "acct") for i in ids], now=time.time())
    with dispatchers(config, processes):
        wait_received(peer, 60)
        procs.wait_for(lambda: len(attempts(conn, outcome="sent")) == 60, message="60 outcomes")
    assert sorted(peer.subjects()) == sorted(ids)

    reservations = Ledger(config.ratelimit_dir).starts("acct")
    assert len(reservations) == 60  # one reservation per send, none lost, none extra
    assert max_in_window(reservations, 1.0) == 5

    sent = {a["message_id"]: a["ts"] for a in attempts(conn, outcome="sent")}
    assert sorted(sent) == sorted(ids)
    assert max_in_window(list(sent.values()), 1.0 - ATTEMPT_TOLERANCE) <= 5

    arrival = {r.message()["Subject"]: r.ts for r in peer.received}
    transaction = [arrival[i] - sent[i] for i in ids]
    spread = max(transaction) - min(transaction)
    assert min(transaction) >= 0
    assert max_in_window(list(arrival.values()), 1.0 - ATTEMPT_TOLERANCE - spread) <= 5

    deferrals = len(attempts(conn, outcome="deferred"))
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
    enqueue(conn, config, *[message(f"a{n}", "acct") for n in range(3)], now=time.time())
    with dispatchers(config, 2):
        wait_received(peer, 2)
        procs.wait_for(lambda: attempts(conn, outcome="deferred"), message="the third held back")
        set_limit(5)  # raised: the next sends go at once, within the same minute
        enqueue(conn, config, message("b0", "acct"), message("b1", "acct"), now=time.time())
        wait_received(peer, 4)
        set_limit(4)  # lowered below what the minute already used: the next send waits
        enqueue(conn, config, message("c0", "acct"), now=time.time())
        procs.wait_for(
            lambda: attempts(conn, "c0", outcome="deferred"),
            message="c0 held back by the lowered limit",
        )
        held = row(conn, "c0")
        assert held["sent_ts"] is None and held["ready_at"] > time.time()  # the next window
    assert sorted(peer.subjects()) == ["a0", "a1", "b0", "b1"]


# -- in process, with a clock the test moves ---------------------------------------------------
def test_combined_minute_and_second_limits_with_a_stepped_clock(conn, config, smtp_server):
    """Two dispatchers share one ledger; the clock jumps to the next ready row each turn."""
    peer = smtp_server()
    store.accounts.upsert(
        conn, "default", peer.account("acct", limit_per_second=2, limit_per_minute=5), 0
    )
    enqueue(conn, config, *[message(f"m{n:02d}", "acct") for n in range(12)])
    clock = Clock()
    pair = [make_dispatcher(conn, config, clock=clock, name=f"d{n}", seed=n) for n in range(2)]
    for _ in range(200):
        if len(peer.received) == 12:
            break
        worked = [dispatcher.run_once(clock.t) for dispatcher in pair]
        if not any(worked):  # both idle: jump to the moment the next row is due
            clock.t = min(d.next_ready for d in pair)
    for dispatcher in pair:
        dispatcher.close()
    starts = sorted(a["ts"] for a in attempts(conn, outcome="sent"))
    assert len(starts) == len(peer.received) == 12
    assert starts == [T0, T0, T0 + 1, T0 + 1, T0 + 2] + [T0 + 60] * 2 + [T0 + 61] * 2 + [
        T0 + 62,
        T0 + 120,
        T0 + 120,
    ]
    assert max_in_window(starts, 1.0) == 2
    assert max_in_window(starts, 60.0) == 5
