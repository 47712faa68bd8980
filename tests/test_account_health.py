"""An SMTP outage is said in the dispatcher's log: once when an account starts failing, once
when it sends again; never a line per message."""

from __future__ import annotations

import logging

from common import store
from dispatcher.outcomes import FAILING_AFTER
from tests.support.db import enqueue
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, Clock, message
from tests.support.smtp import Behavior


def events(caplog, name: str) -> list[str]:
    """``level message`` of each log record of this event."""
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if f"event={name} " in r.getMessage()
    ]


def test_an_outage_is_one_warning_and_its_end_one_line(conn, config, smtp_server, caplog):
    peer = smtp_server(behavior=Behavior(data_reply="451 4.3.0 try again later"))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, *(message(f"m{n}", "acct") for n in range(2 * FAILING_AFTER)))
    clock = Clock()
    dispatcher = make_dispatcher(conn, config, clock=clock)
    with caplog.at_level(logging.INFO, logger="dispatcher"):
        dispatcher.run_once(T0)  # every message: 451
        [failing] = events(caplog, "account_failing")
        assert failing.startswith("WARNING ") and "account=acct" in failing
        assert "code=451" in failing and "try again" in failing

        peer.handler.behavior = Behavior()  # the server is back
        clock.t = T0 + 3600  # past every retry delay
        dispatcher.run_once(clock.t)
    [recovered] = events(caplog, "account_recovered")
    assert "account=acct" in recovered and f"failures={2 * FAILING_AFTER}" in recovered
    assert len(events(caplog, "account_failing")) == 1


def test_a_single_greylisted_message_is_not_an_outage(conn, config, smtp_server, caplog):
    peer = smtp_server(behavior=Behavior(rcpt={"grey@example.com": "450 4.2.0 greylisted"}))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("grey", "acct", to="grey@example.com"), message("ok", "acct"))
    with caplog.at_level(logging.INFO, logger="dispatcher"):
        make_dispatcher(conn, config).run_once(T0)
    assert events(caplog, "account_failing") == events(caplog, "account_recovered") == []
