"""The chores against real processes: run-now --flush after an SMTP outage, a backup taken
while a dispatcher sends, a restore refused while the stack runs and accepted after."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import requests

from common import store
from tests.support import procs
from tests.support.db import enqueue
from tests.support.dispatchers import dispatchers, wait_received
from tests.support.factories import message
from tests.support.smtp import start_server
from tests.support.stack import ASYNCMAIL, ROOT, Stack

pytestmark = pytest.mark.slow


def asyncmail(var_dir, *argv, **settings) -> subprocess.CompletedProcess:
    """One ``asyncmail`` run as an operator types it, on this var dir."""
    return subprocess.run(
        [ASYNCMAIL, *argv],
        cwd=ROOT,
        env=procs.service_env(var_dir, **settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flush_sends_deferred_messages_once_the_server_is_back(conn, config, var_dir):
    port = procs.free_port()  # nothing listens here yet: the SMTP server is down
    account = {"id": "acct", "host": "127.0.0.1", "port": port}
    store.accounts.upsert(conn, "default", account, int(time.time()))
    ids = [f"m{i}" for i in range(20)]
    with dispatchers(config, 1, retry_delays=3600):
        enqueue(conn, config, *(message(i, "acct") for i in ids), now=time.time())
        procs.wait_for(
            lambda: [c["open"] for c in store.circuits.list_all(conn, time.time(), None)] == [True],
            message="the account's circuit open after ConnectionRefused",
        )
        # the message that met the refusal waits an hour for its retry; the rest of the
        # claim went back unsent and waits for the circuit's backoff
        assert store.messages.status_counts(conn, time.time())["deferred"] == 1
        peer = start_server(port=port)  # the server is back; the retry is an hour away
        try:
            done = asyncmail(var_dir, "run-now", "--flush", "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["flushed"] == 1
            assert json.loads(done.stdout)["probing"] == 1
            wait_received(peer, len(ids))
            assert sorted(peer.subjects()) == sorted(ids)
        finally:
            peer.stop()
    assert store.messages.status_counts(conn, time.time())["sent"] == len(ids)


def test_backup_while_a_dispatcher_sends_is_consistent(conn, config, var_dir, tmp_path):
    peer = start_server()
    total = 400
    try:  # 100 a second: the sending lasts seconds, so backups land in the middle of it
        store.accounts.upsert(conn, "default", peer.account(limit_per_second=100), int(time.time()))
        with dispatchers(config, 2):
            enqueue(
                conn, config, *(message(f"m{i}", "acct") for i in range(total)), now=time.time()
            )
            copies = []
            while len(peer.received) < total:
                target = tmp_path / f"copy-{len(copies)}.db"
                done = asyncmail(var_dir, "backup", str(target), "--json")
                assert done.returncode == 0, done.stderr
                copies.append(json.loads(done.stdout))
            wait_received(peer, total)
    finally:
        peer.stop()
    for copy in copies:  # each copy is one instant: every sent row has its attempt, no more
        assert sum(copy["messages"].values()) == total
        assert copy["attempts"].get("sent", 0) == copy["messages"]["sent"]
    assert any(0 < copy["messages"]["sent"] < total for copy in copies), "no copy mid-flow"


TOKEN = "restore-token"


def add(stack: Stack, message_id: str) -> None:
    """Queue a message for an hour from now (no SMTP server is needed)."""
    body = {"messages": [message(message_id, deferred_ts=int(time.time()) + 3600)]}
    headers = {"X-API-Token": TOKEN}
    answer = requests.post(stack.url + "/commands/add-messages", json=body, headers=headers)
    assert answer.json()["queued"] == 1, answer.text


def test_restore_is_refused_while_the_stack_runs(var_dir, tmp_path):
    token = TOKEN
    smtp = {"smtp_host": "127.0.0.1", "smtp_port": procs.free_port()}  # never reached
    stack = Stack(var_dir, port=procs.free_port(), dispatchers=1, api_token=token, **smtp)
    stack.start(expect_running=("web", "dispatcher-00", "reporter"))
    headers = {"X-API-Token": token}
    try:
        add(stack, "kept")
        backup = asyncmail(var_dir, "backup", str(tmp_path / "copy.db"), "--json")
        assert backup.returncode == 0, backup.stderr
        assert json.loads(backup.stdout)["messages"]["deferred"] == 1
        add(stack, "later")
        refused = asyncmail(var_dir, "restore", str(tmp_path / "copy.db"))
        assert refused.returncode == 1 and "supervisord runs" in refused.stderr
    finally:
        survivors = stack.stop()
    assert not survivors
    restored = asyncmail(var_dir, "restore", str(tmp_path / "copy.db"))
    assert restored.returncode == 0, restored.stderr
    again = Stack(var_dir, port=procs.free_port(), api_token=token, **smtp).start()
    try:
        listed = requests.get(again.url + "/messages", headers=headers, timeout=10).json()
        assert [m["id"] for m in listed["messages"]] == ["kept"]
    finally:
        again.stop(signal.SIGTERM)
