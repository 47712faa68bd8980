"""Bounces end to end: the supervisord stack with its bouncer program, an aiosmtpd relay, a
Dovecot bounce mailbox and a proxy_sync upstream.  A message is sent, its relay's bounce
arrives in the mailbox, the upstream hears ``bounced`` once after ``sent``, and the next
message to that address is not sent."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from common import store
from tests.support.imap import dsn_mail
from tests.support.procs import free_port, wait_for
from tests.support.stack import Stack
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow

TOKEN = "e2e-bounces"
VERP_DOMAIN = "bounces.example.net"
DEAD, ALIVE = "gone@example.org", "alive@example.org"


def api(stack: Stack, path: str, method: str = "get", **kwargs) -> requests.Response:
    headers = {"X-API-Token": TOKEN}
    return requests.request(method, stack.url + path, headers=headers, timeout=10, **kwargs)


def queue(stack: Stack, message_id: str, to: list[str]) -> None:
    item = {"id": message_id, "from": "shop@example.net", "to": to, "subject": message_id,
            "body": "Thank you for your order."}  # fmt: skip
    answer = api(stack, "/commands/add-messages", "post", json={"messages": [item]})
    assert answer.json()["queued"] == 1, answer.text


def test_a_bounce_is_reported_once_and_suppresses_the_next_send(
    var_dir, smtp_server, dovecot, tmp_path
):
    sink, mailbox = smtp_server(), dovecot()
    with Upstream() as upstream:
        stack = Stack(var_dir, port=free_port(), dispatchers=1, api_token=TOKEN,
                      smtp_host=sink.host, smtp_port=sink.port, suppression="on",
                      verp_domain=VERP_DOMAIN, client_sync_url=upstream.url,
                      client_sync_idle_seconds=0, **mailbox.settings())  # fmt: skip
        try:
            stack.start(expect_running=("web", "reporter", "bouncer"))
            queue(stack, "m1", [DEAD])
            upstream.wait_for(lambda up: any(i["id"] == "m1" for i in up.items()), 20)
            [relayed] = sink.received
            assert relayed.sender.startswith("bounce+") and relayed.sender.endswith(VERP_DOMAIN)
            header = relayed.message()["Message-ID"]
            mailbox.deliver(dsn_mail("postfix.eml", message_id=header, recipient=DEAD,
                                     sender=relayed.sender))  # fmt: skip
            upstream.wait_for(lambda up: any(i["status"] == "bounced" for i in up.items()), 30)
            # a run-now posts at once whatever is still owed: a second bounced item would be in it
            upstream.clear()
            assert api(stack, "/commands/run-now", "post").status_code == 200
            upstream.wait_for(lambda up: up.answered(), 10)
            assert upstream.items() == []
            queue(stack, "m2", [DEAD, ALIVE])
            upstream.wait_for(lambda up: any(i["id"] == "m2" for i in up.items()), 20)
            wait_for(lambda: mailbox.counts("processed") == {"processed": 1}, 10)
            conn = store.db.connect(var_dir / "asyncmail.db")
            beats = {b["kind"] for b in store.heartbeats.list_all(conn, time.time())}
            conn.close()
        finally:
            survivors = stack.stop(signal.SIGTERM)
        items = upstream.items()
    assert not survivors
    assert "bouncer" in beats
    assert [r.recipients for r in sink.received] == [[DEAD], [ALIVE]]
    [m2] = items
    assert m2["status"] == "sent" and m2["refused"] == {DEAD: [None, "suppressed"]}
    log = (var_dir / "log" / "bouncer.log").read_text()
    assert "event=bounce " in log and "event=suppressed" in log and "event=stopped" in log
    assert mailbox.counts("INBOX", "unmatched") == {"INBOX": 0, "unmatched": 0}


def test_without_a_bounce_mailbox_no_bouncer_runs(var_dir):
    stack = Stack(var_dir, port=free_port(), dispatchers=1)
    try:
        stack.start(expect_running=("web", "reporter"))
        assert "bouncer" not in stack.status()
    finally:
        assert stack.stop(signal.SIGTERM) == set()
