"""Recipients per RFC 5321: 452 is temporary, the rest go in further transactions; limits
per transaction (account) and per message (intake).  Real aiosmtpd servers, real database."""

from __future__ import annotations

import json

from common import intake, store
from tests.support.db import enqueue, row
from tests.support.dispatchers import make_dispatcher
from tests.support.factories import T0, message
from tests.support.smtp import Behavior


def addresses(count: int, domain: str = "example.com") -> list[str]:
    return [f"r{i:03d}@{domain}" for i in range(count)]


def test_250_recipients_to_a_100_per_transaction_server_all_receive_it(conn, config, smtp_server):
    peer = smtp_server(behavior=Behavior(max_rcpt=100, pipelining=True))
    store.accounts.upsert(
        conn, "default", peer.account(max_recipients_per_transaction=150), int(T0)
    )
    everyone = addresses(250)
    enqueue(conn, config, message("big", "acct", to=everyone[:50], bcc=everyone[50:]))
    make_dispatcher(conn, config).run_once(T0)
    got = [r for copy in peer.received for r in copy.recipients]
    assert sorted(got) == everyone  # each exactly once
    assert len({copy.data for copy in peer.received}) == 1  # same bytes, same Message-ID
    assert len({copy.peer_port for copy in peer.received}) == 1  # on one connection
    sent = row(conn, "big")
    assert sent["sent_ts"] == int(T0) and sent["refused"] is None and sent["rcpt_done"] is None


def test_the_account_limit_splits_transactions(conn, config, smtp_server):
    peer = smtp_server()
    store.accounts.upsert(conn, "default", peer.account(max_recipients_per_transaction=3), int(T0))
    enqueue(conn, config, message("m1", "acct", to=addresses(7)))
    make_dispatcher(conn, config).run_once(T0)
    assert [len(copy.recipients) for copy in peer.received] == [3, 3, 1]


def test_a_server_taking_nobody_more_keeps_the_rest_for_a_retry(conn, config, smtp_server):
    """2 of 5 taken, then 452 for everyone else (a quota): the other 3 wait for the retry."""
    everyone = addresses(5)
    quota = {a: "452 4.5.3 quota reached" for a in everyone[2:]}
    peer = smtp_server(behavior=Behavior(max_rcpt=2, rcpt=quota))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct", to=everyone))
    dispatcher = make_dispatcher(conn, config)
    dispatcher.run_once(T0)
    waiting = row(conn, "m1")
    assert waiting["sent_ts"] is None and waiting["error_ts"] is None
    assert json.loads(waiting["rcpt_done"]) == everyone[:2]
    assert [copy.recipients for copy in peer.received] == [everyone[:2]]
    peer.handler.behavior = Behavior(max_rcpt=2)  # the quota is lifted
    dispatcher.run_once(waiting["ready_at"])
    assert [copy.recipients for copy in peer.received] == [everyone[:2], everyone[2:4],
                                                          everyone[4:]]  # fmt: skip
    done = row(conn, "m1")
    assert done["sent_ts"] is not None and done["refused"] is None


def test_a_permanent_refusal_in_a_later_transaction_is_reported(conn, config, smtp_server):
    peer = smtp_server(behavior=Behavior(max_rcpt=2, rcpt={"r003@example.com": "550 no"}))
    store.accounts.upsert(conn, "default", peer.account(), int(T0))
    enqueue(conn, config, message("m1", "acct", to=addresses(4)))
    make_dispatcher(conn, config).run_once(T0)
    sent = row(conn, "m1")
    assert sent["sent_ts"] == int(T0)
    assert json.loads(sent["refused"]) == {"r003@example.com": [550, "no"]}
    assert sorted(r for copy in peer.received for r in copy.recipients) == addresses(3)


def test_the_per_message_cap_refuses_at_enqueue(conn, make_config):
    config = make_config(max_recipients_per_message=10, smtp_host="127.0.0.1")
    items = [
        message("ok", to=addresses(10)),
        message("big", to=addresses(6), cc=addresses(5, "x.org")),
    ]
    result = intake.accept_batch(conn, config, "default", items, T0)
    assert result.queued == ["ok"]
    [rejected] = result.rejected
    assert rejected["id"] == "big" and "11 recipients" in rejected["reason"]
    assert "max_recipients_per_message" in rejected["reason"]
