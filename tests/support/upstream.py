"""A real proxy_sync upstream for tests and benchmarks: an HTTP server in a thread.

It answers like the example client of gnr-async-mail-service (200 and
``{"ok": true, "processed": N}``), checks the auth header when told which one to expect,
and records every request (body, headers, arrival time, the status it answered).  A test can
make it answer an error status, hang, or be down (port closed, kept connections cut)::

    with Upstream(token="s3cret") as upstream:
        config = make_config(client_sync_url=upstream.url, client_sync_token="s3cret")
        ...
        upstream.answer(500)        # answer 500 from now on (answer(200) to recover)
        upstream.hang()             # record each request, then block it until release()
        upstream.release(200)       # unblock held requests (they answer 200) and stop hanging
        upstream.down(); upstream.up()   # closed port, then listening again on the same port
        upstream.wait_for_items(10) # the delivery-report items of 2xx-answered requests

The ``upstream`` fixture is one without auth; a module needing a token overrides it.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

HANG_LIMIT = 120.0  # seconds a hanging request may block at most, so no test waits forever


@dataclass
class Received:
    """One request as the upstream saw it."""

    path: str
    headers: Message  # case-insensitive: headers["x-asyncmail-signature"] works
    body: bytes
    arrived_at: float  # time.time() once the body was read
    status: int | None = None  # what it answered; None while hanging or never answered
    json: dict | None = field(default=None, repr=False)

    @property
    def items(self) -> list[dict]:
        """The ``delivery_report`` items of this request (empty when none)."""
        return list((self.json or {}).get("delivery_report") or [])


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging handler must never keep the test process alive

    def __init__(self, address, upstream: Upstream):
        self.upstream = upstream
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Close kept-alive client connections, as a crashed upstream would."""
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a production upstream allows
    disable_nagle_algorithm = True  # headers and body go out as they are written, no 40 ms stall

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.upstream._handle(self, body)

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read records instead
        pass


class Upstream:
    """The proxy_sync endpoint; see the module docstring.  Thread-safe."""

    def __init__(
        self,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        path: str = "/proxy_sync",
        on_request=None,
    ):
        self.expected_auth = _expected_auth(token, user, password)
        self.path = path
        self.on_request = on_request  # called with each Received before it is answered
        self.requests: list[Received] = []
        self.port = 0  # chosen by the kernel at the first start, kept across down()/up()
        self.status = 200
        self._hanging = False
        self._released = threading.Event()
        self._changed = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def up(self) -> Upstream:
        """Listen (again, on the same port after ``down()``) and serve in a thread."""
        if self._hanging:
            self._released.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening and cut open connections: clients get 'connection refused'."""
        if self._server is None:
            return
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.cut_connections()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Upstream:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- behaviour ----------------------------------------------------------------------------
    def answer(self, status: int) -> None:
        """Answer ``status`` to every request from now on (200 is the default)."""
        self.status = status

    def hang(self) -> None:
        """Record each new request, then hold it unanswered until ``release()``."""
        self._released.clear()
        self._hanging = True

    def release(self, status: int = 200) -> None:
        """Stop hanging; held requests answer ``status``, as do later ones."""
        self.status = status
        self._hanging = False
        self._released.set()

    # -- what arrived -------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every request recorded so far."""
        with self._changed:
            self.requests.clear()

    def answered(self) -> list[Received]:
        """Requests answered with a 2xx, in arrival order."""
        with self._changed:
            return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    def items(self) -> list[dict]:
        """Every delivery-report item acknowledged with a 2xx, in arrival order."""
        return [item for request in self.answered() for item in request.items]

    def wait_for(self, predicate, timeout: float = 10.0):
        """Block until ``predicate(self)`` is truthy (checked on every request); return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := predicate(self)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"upstream: timed out after {timeout}s")
                self._changed.wait(remaining)
            return value

    def wait_for_items(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Block until at least ``count`` items were acknowledged; return all of them."""
        return self.wait_for(lambda up: len(up.items()) >= count and up.items(), timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``count`` requests arrived (answered or not)."""
        return self.wait_for(lambda up: len(up.requests) >= count and list(up.requests), timeout)

    # -- serving ------------------------------------------------------------------------------
    def _handle(self, handler: _Handler, body: bytes) -> None:
        record = Received(handler.path, handler.headers, body, time.time())
        try:
            record.json = json.loads(body) if body else None
        except ValueError:
            record.json = None
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        if self.on_request is not None:
            self.on_request(record)
        if self._hanging:
            self._released.wait(HANG_LIMIT)
        status = self._status_for(handler, record)
        answer = json.dumps({"ok": 200 <= status < 300, "processed": len(record.items)}).encode()
        # recorded before the client can see the answer, so a test that has its answer in
        # hand finds the status here too
        self._set_status(record, status)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:  # the client gave up (timeout) or the test cut the connection
            self._set_status(record, None)

    def _set_status(self, record: Received, status: int | None) -> None:
        with self._changed:
            record.status = status
            self._changed.notify_all()

    def _status_for(self, handler: _Handler, record: Received) -> int:
        if self.expected_auth and handler.headers.get("Authorization") != self.expected_auth:
            return 401
        if handler.path != self.path:
            return 404
        return self.status


def _expected_auth(token: str | None, user: str | None, password: str | None) -> str | None:
    if token:
        return f"Bearer {token}"
    if user:
        raw = f"{user}:{password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()
    return None


@pytest.fixture
def upstream():
    """A running upstream that takes any request; stopped after the test."""
    with Upstream() as server:
        yield server
