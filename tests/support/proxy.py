"""A real HTTP hop in front of the service, as a load balancer is; it can fail requests.

with FlakyProxy(stack.url) as proxy:
    proxy.fail(2)    # the next 2 requests: 503 with Retry-After: 0, not forwarded
    proxy.cut(1)     # the next request: connection closed before forwarding
    proxy.lose(1)    # the next request: forwarded, then the connection closed unanswered
    MailClient(proxy.url).send(...)
    proxy.seen       # [(method, path, what happened), ...]: "503", "cut", "lost", "200"
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proxy: FlakyProxy = self.server.proxy
        mode = proxy.next_mode()
        if mode == "cut":
            proxy.note(self, "cut")
            self.close_connection = True
            return
        if mode == "503":
            proxy.note(self, "503")
            self._answer(503, {"Retry-After": "0"}, b'{"ok":false,"error":"busy, try again"}')
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        answer = requests.request(
            self.command, proxy.backend + self.path, data=body, headers=headers, timeout=30
        )
        if mode == "lose":  # the backend did the work; its answer never reaches the client
            proxy.note(self, "lost")
            self.close_connection = True
            return
        proxy.note(self, str(answer.status_code))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
        self._answer(answer.status_code, kept, answer.content)

    do_GET = do_POST = do_DELETE = _any  # noqa: N815 - http.server's naming

    def _answer(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read proxy.seen
        pass


class FlakyProxy:
    """Forwards every request to ``backend`` unless told to fail the next ones."""

    def __init__(self, backend: str):
        self.backend = backend.rstrip("/")
        self.seen: list[tuple[str, str, str]] = []
        self._modes: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, n: int) -> None:
        self._queue("503", n)

    def cut(self, n: int) -> None:
        self._queue("cut", n)

    def lose(self, n: int) -> None:
        self._queue("lose", n)

    def _queue(self, mode: str, n: int) -> None:
        with self._lock:
            self._modes += [mode] * n

    def next_mode(self) -> str:
        with self._lock:
            return self._modes.pop(0) if self._modes else "forward"

    def note(self, handler: _Handler, what: str) -> None:
        with self._lock:
            self.seen.append((handler.command, handler.path, what))

    def outcomes(self, path: str) -> list[str]:
        """What happened to each request to ``path``, in order."""
        with self._lock:
            return [what for _, p, what in self.seen if p == path]

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
