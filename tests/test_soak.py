"""The soak: ten minutes of mixed traffic through the whole supervisord stack against slow and
hostile peers, a random dispatcher SIGKILLed every 30 s.  Run with ``make test-soak``
(``--soak``; ``--soak-seconds`` shortens it); ``make test`` leaves it out.

Traffic, per half second: ordinary mail, and in turn a message for a server that answers
the end of DATA after 2 s, one for a server that takes 20 recipients per transaction (40
recipients), one for a server that never greets, and now and then one whose attachment
drips a byte a second.  When the traffic stops, the mute server's account is pointed at a
working server (the outage ends).  Then every acknowledged message must end sent or failed
with a reason, every outcome must be reported, and every message delivered more than once
must be flagged ``possible_duplicate``, and there are no more of them than kills: a kill
costs at most the message in hand (what was accepted but not committed yet is recorded from
the killed dispatcher's journal, dispatcher/journal.py).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import threading
import time

import pytest
import requests

from common import store
from tests.support.factories import message
from tests.support.hostile import DrippingSource
from tests.support.procs import free_port, wait_for
from tests.support.smtp import Behavior
from tests.support.stack import Stack
from tests.support.upstream import Upstream

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]

TOKEN = "soak-token"
TICK = 0.5  # seconds between batches
KILL_EVERY = 30.0  # seconds between SIGKILLs of a random dispatcher
DISPATCHERS = 3
DRAIN = 300  # seconds for the queue to empty once the traffic stops (retries, circuits)


class Traffic(threading.Thread):
    """Posts a mixed batch every TICK until stopped; remembers what was acknowledged."""

    def __init__(self, url: str, drip_url: str):
        super().__init__(daemon=True)
        self.url, self.drip_url = url, drip_url
        self.accepted: dict[str, str] = {}  # id -> kind
        self.halt = threading.Event()

    def batch(self, tick: int) -> list[tuple[str, dict]]:
        items = [("normal", message(f"n{tick}-{i}", "normal")) for i in range(3)]
        if tick % 4 == 0:
            items.append(("slow", message(f"s{tick}", "slow")))
        if tick % 2 == 0:
            to = [f"r{i}@example.com" for i in range(40)]
            items.append(("rcpt", message(f"r{tick}", "rcpt", to=to)))
        if tick % 2 == 1:
            items.append(("mute", message(f"m{tick}", "mute")))
        if tick % 40 == 7:
            attachment = {"filename": "slow.bin", "url": self.drip_url}
            items.append(("drip", message(f"d{tick}", "normal", attachments=[attachment])))
        return items

    def run(self) -> None:
        with requests.Session() as session:
            tick = 0
            while not self.halt.wait(TICK):
                items = self.batch(tick)
                answer = session.post(
                    self.url + "/commands/add-messages",
                    json={"messages": [item for _, item in items]},
                    headers={"X-API-Token": TOKEN},
                    timeout=30,
                ).json()
                assert not answer["rejected"], answer["rejected"]
                self.accepted.update({item["id"]: kind for kind, item in items})
                tick += 1


class Killer(threading.Thread):
    """SIGKILLs a random dispatcher every KILL_EVERY seconds (supervisord restarts it)."""

    def __init__(self, stack: Stack, seed: int = 10):
        super().__init__(daemon=True)
        self.stack, self.rng = stack, random.Random(seed)
        self.kills: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(KILL_EVERY):
            name = f"dispatcher-{self.rng.randrange(DISPATCHERS):02d}"
            try:
                pid = self.stack.program_pid(name)
            except ValueError:  # being restarted right now: no pid
                continue
            if pid > 0:
                os.kill(pid, signal.SIGKILL)
                self.kills.append(name)


def api(stack: Stack, method: str, path: str, **kwargs) -> dict:
    headers = {"X-API-Token": TOKEN}
    return requests.request(method, stack.url + path, headers=headers, timeout=30, **kwargs).json()


def deliveries(*peers) -> collections.Counter:
    """(message id, recipient) -> copies accepted, over every server."""
    copies = collections.Counter()
    for peer in peers:
        for received in list(peer.received):
            for recipient in received.recipients:
                copies[(received.message()["Subject"], recipient)] += 1
    return copies


def test_mixed_traffic_with_killed_dispatchers(var_dir, tmp_path, smtp_server, silent_server,
                                               hostile, request):  # fmt: skip
    seconds = request.config.getoption("--soak-seconds")
    normal = smtp_server(behavior=Behavior(pipelining=True))
    slow = smtp_server(behavior=Behavior(data_delay=2))
    rcpt = smtp_server(behavior=Behavior(max_rcpt=20, pipelining=True))
    drip = hostile(DrippingSource, interval=1.0)
    upstream = Upstream().up()
    ini = tmp_path / "soak.ini"
    ini.touch()
    stack = Stack(var_dir, ini, port=free_port(), dispatchers=DISPATCHERS, api_token=TOKEN,
                  lease_seconds=5, retry_delays="1,2,4", max_retries=4,
                  attachment_timeout_seconds=2, allow_private_attachment_urls="true",
                  client_sync_url=upstream.url, client_sync_idle_seconds=0)  # fmt: skip
    names = ("web", "reporter", *[f"dispatcher-{n:02d}" for n in range(DISPATCHERS)])
    stack.start(expect_running=names)
    try:
        for account in (normal.account("normal"), slow.account("slow"),
                        rcpt.account("rcpt", max_recipients_per_transaction=50),
                        silent_server.account("mute", timeout=2)):  # fmt: skip
            assert api(stack, "post", "/account", json=account)["ok"]
        traffic, killer = Traffic(stack.url, drip.url), Killer(stack)
        traffic.start()
        killer.start()
        time.sleep(seconds)  # the soak itself: traffic and kills run meanwhile
        traffic.halt.set()
        killer.halt.set()
        traffic.join(60)
        killer.join(60)
        # the outage ends: the mute server's account now reaches a working server
        assert api(stack, "post", "/account", json=normal.account("mute"))["ok"]

        def drained():
            counts = api(stack, "get", "/status")["counts"]
            return counts["queued"] + counts["deferred"] + counts["sending"] == 0 and counts

        counts = wait_for(drained, timeout=DRAIN, interval=1, message="the queue drained")
        ids = set(traffic.accepted)
        upstream.wait_for(lambda up: {i["id"] for i in up.items()} >= ids, timeout=60)
    finally:
        survivors = stack.stop(signal.SIGTERM)
        upstream.down()
    assert survivors == set()

    conn = store.db.connect(var_dir / "asyncmail.db")
    rows = {r["id"]: r for r in conn.execute(
        "SELECT id, sent_ts, error_ts, error, possible_duplicate FROM messages")}  # fmt: skip
    conn.close()
    assert set(rows) >= ids
    unfinished = [i for i in ids if not (rows[i]["sent_ts"] or rows[i]["error"])]
    assert unfinished == []  # every acknowledged message: sent, or failed with a reason
    copies = deliveries(normal, slow, rcpt)
    twice = {message_id for (message_id, _), n in copies.items() if n > 1}
    kinds = collections.Counter(traffic.accepted.values())
    failed = collections.Counter(traffic.accepted[i] for i in ids if not rows[i]["sent_ts"])
    unflagged = sorted(i for i in twice if not rows[i]["possible_duplicate"])
    summary = {"seconds": seconds, "accepted": len(ids), "by_kind": kinds, "failed": failed,
               "kills": len(killer.kills), "duplicated_messages": len(twice),
               "unflagged_duplicates": unflagged, "counts": counts}  # fmt: skip
    (var_dir / "soak.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    assert set(failed) <= {"drip", "mute"}  # the others all reached their servers
    drips = [rows[i]["error"] for i in ids if traffic.accepted[i] == "drip"]
    assert all("not fetched within" in error for error in drips)
    assert summary["unflagged_duplicates"] == []  # every second copy is flagged
    # a SIGKILL costs at most the message in hand (docs/dispatch.md, the send journal)
    assert len(twice) <= len(killer.kills)
