"""The per-account circuit breaker against real peers: a closed port, a server that greets
with 421, one that never speaks.  One connection attempt per backoff, not one per message;
the other accounts of the claim flow on."""

from __future__ import annotations

from common import operations, store
from tests.support.db import attempts, enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, Clock, message
from tests.support.hostile import RefusingServer
from tests.support.procs import free_port


def queue(conn, config, account_id: str, count: int) -> list[str]:
    return enqueue(conn, config, *[message(f"{account_id}{i}", account_id) for i in range(count)])


def circuit(conn, account_id: str) -> dict | None:
    return next(
        (c for c in store.circuits.list_all(conn, T0, None) if c["account_id"] == account_id), None
    )


def test_a_refused_connection_holds_the_account_not_the_claim(conn, config, smtp_server):
    up, down_port = smtp_server(), free_port()
    store.accounts.upsert(conn, "default", up.account("up"), int(T0))
    store.accounts.upsert(
        conn, "default", {"id": "down", "host": "127.0.0.1", "port": down_port}, int(T0)
    )
    down = queue(conn, config, "down", 10)
    queue(conn, config, "up", 3)
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    dispatcher.run_once(T0)
    assert sorted(up.subjects()) == ["up0", "up1", "up2"]  # the same claim went on
    assert len(attempts(conn, outcome="temporary")) == 1  # one try, not one per message
    opened = circuit(conn, "down")
    assert opened["open"] and opened["failures"] == 1 and "Refused" in opened["reason"]
    assert 4 <= opened["open_until"] - T0 <= 6  # the first backoff: 5 s ± 20 %
    rest = [row(conn, m) for m in down[1:]]
    assert all(r["lease_owner"] is None and r["attempts"] == 0 for r in rest)
    assert dispatcher.run_once(T0 + 1) is False  # the open circuit is not claimed at all
    assert abs(dispatcher.next_ready - opened["open_until"]) < 1  # sleeps until the probe
    clock.t = opened["open_until"] + 1
    dispatcher.run_once(clock.t)  # the probe: still refused, the circuit opens for longer
    again = circuit(conn, "down")
    assert again["failures"] == 2 and again["open_until"] - clock.t >= 8
    assert len(attempts(conn, outcome="temporary")) == 2
    back = smtp_server(port=down_port)  # the server returns
    clock.t = again["open_until"] + 1
    dispatcher.run_once(clock.t)  # half-open: the claim takes one row, the probe
    assert circuit(conn, "down") is None and len(back.received) == 1  # through: closed
    dispatcher.run_once(clock.t)
    assert len(back.received) == 8  # all but the failed probes (waiting for their retry)
    dispatcher.close()


def test_a_421_greeting_opens_the_circuit(conn, config, hostile):
    refusing = hostile(RefusingServer)
    store.accounts.upsert(conn, "default", refusing.account(), int(T0))
    queue(conn, config, "refusing", 5)
    make_dispatcher(conn, config).run_once(T0)
    assert refusing.connections == 1
    assert circuit(conn, "refusing")["reason"].startswith("421")


def test_a_mute_server_costs_one_timeout_per_backoff(conn, config, silent_server):
    store.accounts.upsert(conn, "default", silent_server.account(timeout=0.5), int(T0))
    queue(conn, config, "silent", 5)
    make_dispatcher(conn, config).run_once(T0)
    assert len(silent_server.accepted) == 1  # not five timeouts in a row
    assert circuit(conn, "silent")["open"]


def test_status_shows_the_open_circuit(conn, config):
    store.circuits.trip(conn, "default", None, T0, T0 - 1, "ConnectionRefusedError", lambda n: 30.0)
    [shown] = operations.status(conn, config, T0)["circuits"]
    assert shown == {
        "tenant_id": "default",
        "account_id": None,
        "open": True,
        "open_until": int(T0 + 30),
        "failures": 1,
        "since": int(T0),
        "reason": "ConnectionRefusedError",
    }
