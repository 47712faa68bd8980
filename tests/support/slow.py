"""Hostile HTTP clients: connections that send a request a little at a time and never finish.

``SlowClients`` keeps a number of such connections open against a server (a slowloris):
  header   the request line, then one header line per step, never the blank line
  body     a whole head announcing a large body, then one byte of it per step
  stalled  a whole head announcing ``Content-Length: 99999999999``, then nothing
None of them carries a token.  A connection the server closes or answers is opened again at
the next step, as an attacker would, so the pressure lasts as long as the ``with`` block.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from dataclasses import dataclass, field

import requests

KINDS = ("header", "body", "stalled")
PATH = "/commands/add-messages"


def _head(kind: str) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1"]
    if kind == "body":
        lines += ["Content-Type: application/json", "Content-Length: 1000000"]
    if kind == "stalled":
        lines += ["Content-Type: application/json", "Content-Length: 99999999999"]
    text = "\r\n".join(lines) + "\r\n"
    return (text + "\r\n").encode() if kind != "header" else text.encode()


@dataclass
class _Conn:
    kind: str
    sock: socket.socket | None = None
    steps: int = 0


@dataclass
class SlowClients:
    """``with SlowClients(port, header=20, body=20):`` keeps those connections dripping."""

    port: int
    header: int = 0
    body: int = 0
    stalled: int = 0
    interval: float = 1.0  # seconds between two steps of one connection
    opened: int = 0
    closed_by_server: int = 0
    _conns: list[_Conn] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SlowClients:
        counts = {"header": self.header, "body": self.body, "stalled": self.stalled}
        self._conns = [_Conn(kind) for kind in KINDS for _ in range(counts[kind])]
        for conn in self._conns:  # every connection is open before the caller goes on
            self._step(conn)
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns:
            self._drop(conn)

    def open_now(self) -> int:
        """How many of the connections are open at this moment."""
        return sum(conn.sock is not None for conn in self._conns)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._reap()
            for conn in self._conns:
                self._step(conn)

    def _reap(self) -> None:
        """Drop the connections the server answered or closed; they reopen at the next step."""
        socks = {conn.sock: conn for conn in self._conns if conn.sock is not None}
        if not socks:
            return
        readable, _, _ = select.select(list(socks), [], [], 0)
        for sock in readable:
            self.closed_by_server += 1
            self._drop(socks[sock])

    def _step(self, conn: _Conn) -> None:
        try:
            if conn.sock is None:
                conn.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                conn.steps = 0
                self.opened += 1
                conn.sock.sendall(_head(conn.kind))
            elif conn.kind == "header":
                conn.sock.send(f"X-Slow-{conn.steps}: {conn.steps}\r\n".encode())
            elif conn.kind == "body":
                conn.sock.send(b" ")
            conn.steps += 1
        except OSError:
            self.closed_by_server += 1
            self._drop(conn)

    @staticmethod
    def _drop(conn: _Conn) -> None:
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()
            conn.sock = None


def timed_posts(url: str, bodies: list[dict], headers: dict, timeout: float) -> list[float | None]:
    """POST each body in turn on one keep-alive session: seconds per answered 200, else None."""
    seconds: list[float | None] = []
    with requests.Session() as session:
        session.headers.update(headers)
        for body in bodies:
            started = time.perf_counter()
            try:
                ok = session.post(url, json=body, timeout=timeout).status_code == 200
            except requests.RequestException:
                ok = False
            seconds.append(time.perf_counter() - started if ok else None)
    return seconds
