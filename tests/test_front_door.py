"""The front door under the real gunicorn: slow and stalled clients, malformed requests, a
locked database and huge listings cost a normal client nothing (web/front.py, web/db.py)."""

from __future__ import annotations

import json
import socket
import time

import apsw
import pytest
import requests

from common import store
from tests.support.factories import message
from tests.support.procs import wait_for
from tests.support.slow import SlowClients, timed_posts
from tests.support.web import gunicorn_server

pytestmark = pytest.mark.slow

TOKEN = "front-door-token"
AUTH = {"X-API-Token": TOKEN}
MIB = 1024 * 1024


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict, bytes, bool]:
    """Send raw bytes, read the answer: (status, headers, body, closed by the server after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            body += sock.recv(65536)
        closed = sock.recv(1) == b""  # a kept-alive connection would time out here instead
    return int(lines[0].split()[1]), headers, body, closed


def test_slow_clients_without_token_do_not_delay_an_enqueue(var_dir):
    """20 slow-header and 20 slow-body clients: every one of 20 enqueues is answered."""
    with gunicorn_server(var_dir, api_token=TOKEN) as server:
        bodies = [{"messages": [message(f"m{n}")]} for n in range(20)]
        with SlowClients(server.port, header=20, body=20, stalled=4, interval=0.5) as slow:
            seconds = timed_posts(server.base + "/commands/add-messages", bodies, AUTH, 30)
        assert slow.opened >= 44
    assert None not in seconds, seconds


def test_a_body_without_token_is_refused_before_it_is_read(var_dir):
    head = (
        "POST /commands/add-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"
    )
    with gunicorn_server(var_dir, api_token=TOKEN) as server:
        status, headers, body, closed = raw_exchange(server.port, head.encode())
    assert status == 401 and closed
    assert headers["content-type"] == "application/json"
    assert "token" in json.loads(body)["error"]


def test_a_body_slower_than_the_minimum_rate_is_cut_with_408(var_dir):
    head = (
        "POST /commands/add-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-API-Token: {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        '{"messages": ['
    )
    with gunicorn_server(var_dir, api_token=TOKEN) as server:
        status, headers, body, closed = raw_exchange(server.port, head.encode())
        assert requests.get(server.base + "/status", headers=AUTH).status_code == 200
    assert status == 408 and closed
    assert json.loads(body)["ok"] is False


def test_an_unfinished_request_head_is_dropped(var_dir):
    with gunicorn_server(var_dir, api_token=TOKEN) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"POST /commands/add-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert sock.recv(1) == b""  # closed by the server, without an answer


MALFORMED = {  # what gunicorn refuses before the app sees it, and its status
    "request line too long": (b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "too many header fields": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-F%d: 1\r\n" % n for n in range(150))
        + b"\r\n",
        431,
    ),
    "header field too large": (b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    "malformed request line": (b"GARBAGE\r\n\r\n", 400),
    "bad chunked framing": (
        b"POST /commands/add-messages HTTP/1.1\r\nHost: x\r\nX-API-Token: %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" % TOKEN.encode(),
        400,
    ),
}


@pytest.mark.parametrize("request_bytes,status", MALFORMED.values(), ids=MALFORMED.keys())
def test_gunicorn_refusals_are_json(var_dir, request_bytes, status):
    with gunicorn_server(var_dir, api_token=TOKEN) as server:
        answered, headers, body, closed = raw_exchange(server.port, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert document["ok"] is False and document["error"].endswith(".")


def test_a_locked_database_answers_503_in_the_budget_then_200(var_dir):
    """An outside transaction holds the write lock: 503 + Retry-After, then 200 once free."""
    with gunicorn_server(var_dir, api_token=TOKEN, db_wait_seconds=1) as server:
        url = server.base + "/commands/add-messages"
        holder = store.db.connect(var_dir / "asyncmail.db")
        holder.execute("BEGIN IMMEDIATE")
        try:
            locked = requests.post(url, json={"messages": [message("m")]}, headers=AUTH)
            # the wait is cooperative: the worker serves other requests meanwhile
            assert requests.get(server.base + "/health", timeout=5).status_code == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        free = requests.post(url, json={"messages": [message("m")]}, headers=AUTH)
    assert locked.status_code == 503 and locked.headers["Retry-After"].isdigit()
    assert "retry" in locked.json()["error"]
    assert free.status_code == 200 and free.json()["queued"] == 1


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_listing_huge_messages_keeps_the_worker_small(var_dir, config):
    """10 stored messages of 24 MiB: listing them, payloads included, stays under 150 MiB."""
    conn = store.db.connect(config.database)
    big = [
        store.messages.NewMessage(
            f"big{n}", None, 2, message(f"big{n}", body="x" * 24 * MIB), None, f"<big{n}@x.example>"
        )
        for n in range(10)
    ]
    for item in big:
        store.messages.enqueue(conn, "default", [item], time.time())
    conn.close()
    with gunicorn_server(var_dir, api_token=TOKEN, workers=1) as server:
        (worker,) = wait_for(server.workers, message="the worker")
        summary = requests.get(server.base + "/messages?limit=1000", headers=AUTH).json()
        assert [m["id"] for m in summary["messages"]] == [f"big{n}" for n in range(10)]
        assert all("message" not in m for m in summary["messages"])
        seen, cursor = [], 0
        while cursor is not None:
            page = requests.get(
                server.base + f"/messages?include=payload&limit=1000&cursor={cursor}",
                headers=AUTH,
            ).json()
            seen += [(m["id"], len(m["message"]["body"])) for m in page["messages"]]
            cursor = page["next_cursor"]
        peak = _peak_rss_mib(worker)
    assert seen == [(f"big{n}", 24 * MIB) for n in range(10)]
    assert peak < 150, f"worker peak RSS {peak:.0f} MiB"


def test_a_client_that_stops_reading_is_dropped_and_frees_the_wal(var_dir, config):
    """A streamed listing holds a read transaction while it is written: a client that stops
    reading it must not keep the WAL from starting again (web/front.py, "answer")."""
    conn = store.db.connect(config.database)
    for n in range(3):
        item = message(f"big{n}", body="x" * 8 * MIB)
        new = store.messages.NewMessage(f"big{n}", None, 2, item, None, f"<big{n}@x.example>")
        store.messages.enqueue(conn, "default", [new], time.time())
    checker = apsw.Connection(str(config.database))  # no busy timeout: answers at once

    def truncated() -> bool:
        return checker.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0] == 0

    with gunicorn_server(var_dir, api_token=TOKEN, workers=1) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(
            f"GET /messages?include=payload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-API-Token: {TOKEN}\r\n\r\n".encode()
        )
        assert stalled.recv(1024).startswith(b"HTTP/1.1 200")  # then it reads nothing more
        queued = requests.post(server.base + "/commands/add-messages", headers=AUTH,
                               json={"messages": [message("after")]}, timeout=10)  # fmt: skip
        assert queued.ok
        assert not truncated()  # the stalled answer's snapshot holds the WAL
        wait_for(truncated, timeout=60, interval=0.5, message="the stalled reader dropped")
        stalled.close()
        assert "event=slow_reader" in server.log.read_text()
    checker.close()
    conn.close()
