"""The API under the real gunicorn, started as supervisord starts it (etc/gunicorn.conf.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import pytest
import requests

from common import metrics, store
from tests.support.factories import message
from tests.support.procs import wait_for
from tests.support.stack import descendants
from tests.support.web import gunicorn_server

pytestmark = pytest.mark.slow

TOKEN = "gunicorn-test-token"
LIMIT = 20_000  # max_request_bytes for these servers: small, so 413 costs little


@contextlib.contextmanager
def gunicorn(var_dir, **settings):
    """The real gunicorn with a small max_request_bytes; yields its base URL."""
    with gunicorn_server(var_dir, max_request_bytes=LIMIT, **settings) as server:
        yield server.base


def test_real_gunicorn_authenticates_and_enqueues(var_dir):
    with gunicorn(var_dir, api_token=TOKEN) as base:
        assert requests.get(base + "/health").json() == {"ok": True, "status": "ok"}
        for headers in ({}, {"X-API-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
            response = requests.get(base + "/status", headers=headers)
            assert response.status_code == 401
            assert response.json()["ok"] is False
        posted = requests.post(base + "/commands/add-messages", json={"messages": [message("x")]})
        assert posted.status_code == 401

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        answer = session.post(base + "/commands/add-messages", json={"messages": [message("m1")]})
        assert answer.status_code == 200
        assert answer.json() == {"ok": True, "queued": 1, "rejected": []}
        assert session.get(base + "/messages/m1").json()["message"] == message("m1")
        assert session.get(base + "/status").json()["counts"]["queued"] == 1


def test_real_gunicorn_answers_errors_as_json(var_dir):
    with gunicorn(var_dir, api_token=TOKEN) as base:
        session = requests.Session()
        session.headers["X-API-Token"] = TOKEN
        url = base + "/commands/add-messages"
        cases = [
            (session.get(base + "/nowhere"), 404),
            (session.get(url), 405),
            (session.post(url, data=b"not json"), 400),
            (session.post(url, json={"messages": [message("a")] * 2 + [{"id": 1}]}), 200),
            (session.post(url, json={"messages": [message(f"m{i}") for i in range(1001)]}), 413),
            (session.post(url, data=b"{" + b" " * LIMIT + b"}"), 413),
        ]
        for response, status in cases:
            assert response.status_code == status, response.text
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.json()["ok"] is (status == 200)


def test_real_gunicorn_refuses_an_oversized_chunked_body(var_dir):
    def chunks():
        yield b'{"messages": [{"id": "big", "body": "'
        for _ in range(4):
            yield b"x" * (LIMIT // 2)
        yield b'"}]}'

    with gunicorn(var_dir, api_token=TOKEN) as base:
        response = requests.post(
            base + "/commands/add-messages", data=chunks(), headers={"X-API-Token": TOKEN}
        )
        assert response.status_code == 413
        assert response.json()["ok"] is False
        status = requests.get(base + "/status", headers={"X-API-Token": TOKEN}).json()
        assert sum(status["counts"].values()) == 0


def test_real_gunicorn_metrics_carry_the_reference_names(var_dir):
    with gunicorn(var_dir, api_token=TOKEN) as base:
        requests.post(
            base + "/commands/add-messages",
            json={"messages": [message("m")]},
            headers={"X-API-Token": TOKEN},
        )
        text = requests.get(base + "/metrics", headers={"X-API-Token": TOKEN}).text
    for name in metrics.REFERENCE_NAMES:
        assert f"\n{name}" in text, name


def _non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent; the kernel picks the source address
        address = sock.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


def test_real_gunicorn_without_token_serves_only_loopback(var_dir):
    address = _non_loopback_address()
    with gunicorn(var_dir, host="0.0.0.0") as base:
        local = base.replace("0.0.0.0", "127.0.0.1")
        assert requests.get(local + "/status").status_code == 200
        rebound = requests.get(local + "/status", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403  # a page whose name was rebound to 127.0.0.1
        form = requests.post(local + "/commands/suspend", data="x", headers={"Origin": "null"})
        assert form.status_code == 403
        if address is None:
            pytest.skip("no non-loopback address to reach the server from")
        remote = requests.get(base.replace("0.0.0.0", address) + "/status")
        assert remote.status_code == 401
        assert "loopback" in remote.json()["error"]


def test_sigkilled_workers_lose_no_acknowledged_message(var_dir):
    """Workers killed mid-stream: every message the API acknowledged is stored.

    A request a killed worker never answered is retried by the client with the same id,
    which is safe: an unclaimed id is replaced, not duplicated.
    """
    acknowledged, kills = [], 0
    with gunicorn_server(var_dir, max_request_bytes=LIMIT, api_token=TOKEN) as server:
        base, master = server.base, server.master
        session = requests.Session()
        session.headers["X-API-Token"] = TOKEN
        for i in range(300):
            if i % 60 == 30:  # SIGKILL every worker that serves us now
                for pid in descendants(master.pid):
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            batch = {"messages": [message(f"k{i}-{j}") for j in range(5)]}
            answer = _post_until_answered(session, base + "/commands/add-messages", batch)
            assert answer.json()["queued"] == 5
            acknowledged.extend(m["id"] for m in batch["messages"])
        conn = store.db.connect(var_dir / "asyncmail.db")
        stored = {row["id"] for row in conn.execute("SELECT id FROM messages")}
        conn.close()
    assert kills >= 5
    assert set(acknowledged) <= stored and len(stored) == len(acknowledged)


def _post_until_answered(session, url, body):
    """POST, retrying while the worker that had the connection is dead (the client's job)."""

    def attempt():
        try:
            return session.post(url, json=body, timeout=10)
        except requests.ConnectionError:
            return None

    return wait_for(attempt, message="an answer from a live worker")
