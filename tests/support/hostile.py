"""Hostile peers for tests: servers that refuse, drip or watch, each a real socket in a thread.

    refusing = RefusingServer()        # accepts TCP, greets "421", hangs up: a refusal
    greeter = DrippingGreeter(b"* OK ready\r\n", interval=0.5)  # drips a greeting, then mute
    drip = DrippingSource(interval=1)  # HTTP 200 whose body comes one byte per interval
    imds = MetadataStandIn()           # where AWS_EC2_METADATA_SERVICE_ENDPOINT may point

Every server counts what reached it (``connections``, ``requests``) so a test can assert
how often the service tried, and ``stop()`` ends its threads at once.  Slow SMTP behaviours
of a real aiosmtpd server (late or held end-of-DATA replies, 452 after N recipients) are
``Behavior`` options in ``tests/support/smtp.py``; a server that never speaks is its
``SilentServer``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOST = "127.0.0.1"


class RefusingServer:
    """Accepts a connection, answers the greeting with 421 and closes it."""

    def __init__(self, reply: bytes = b"421 4.3.2 Service not available, closing channel\r\n"):
        self.reply = reply
        self.sock = socket.create_server((HOST, 0))
        self.host, self.port = HOST, self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                with conn, contextlib.suppress(OSError):
                    conn.sendall(self.reply)

    def account(self, account_id: str = "refusing", **extra) -> dict:
        """An ``accounts`` row pointing at this server."""
        return {"id": account_id, "host": self.host, "port": self.port, **extra}

    def stop(self) -> None:
        self.sock.close()


class DrippingGreeter:
    """A TCP server (or a Unix one at ``path``) that sends ``text`` one byte every
    ``interval`` seconds, then nothing (interval 0: the whole text at once, then a mute
    server); ``cut`` counts the connections the client closed before the end of the text."""

    def __init__(self, text: bytes, interval: float = 0.5, path: Path | None = None):
        self.text, self.interval = text, interval
        self.cut = 0
        self.stopped = threading.Event()
        if path is None:
            self.sock = socket.create_server((HOST, 0))
            self.host, self.port = HOST, self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(path))
            self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._greet, args=(conn,), daemon=True).start()

    def _greet(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.interval == 0:
                    conn.sendall(self.text)
                for byte in self.text if self.interval else ():
                    conn.sendall(bytes([byte]))
                    if self.stopped.wait(self.interval):
                        return
            except OSError:
                self.cut += 1
                return
            self.stopped.wait()  # mute from now on

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


class _Drip(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - a report upstream that drips its answer
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def do_GET(self):  # noqa: N802 - http.server's naming
        source: DrippingSource = self.server.source
        source.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(source.length))
        self.end_headers()
        for _ in range(source.length):
            if source.stopped.wait(source.interval):
                return
            try:
                self.wfile.write(b"x")
                self.wfile.flush()
            except OSError:  # the client cut the connection: what a deadline does
                source.cut += 1
                return

    def log_message(self, *args):
        pass


class DrippingSource:
    """An HTTP server (an attachment source, or a report upstream for POST) that sends its
    body one byte every ``interval`` seconds."""

    def __init__(self, interval: float = 1.0, length: int = 1000):
        self.interval, self.length = interval, length
        self.requests = 0
        self.cut = 0  # downloads the client abandoned mid-body
        self.stopped = threading.Event()
        self.server = ThreadingHTTPServer((HOST, 0), _Drip)
        self.server.daemon_threads = True
        self.server.source = self
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/slow.bin"

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


class _Metadata(BaseHTTPRequestHandler):
    def _record(self):
        self.server.stand_in.requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = _record  # noqa: N815 - IMDSv2 asks for a token with PUT first

    def log_message(self, *args):
        pass


class MetadataStandIn:
    """Where a cloud instance's metadata endpoint (169.254.169.254) would be: records every
    request (botocore honours AWS_EC2_METADATA_SERVICE_ENDPOINT) and answers 404."""

    def __init__(self):
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer((HOST, 0), _Metadata)
        self.server.daemon_threads = True
        self.server.stand_in = self
        self.url = f"http://{HOST}:{self.server.server_address[1]}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile():
    """hostile(Kind, **kwargs) -> a running hostile peer; all stopped after the test."""
    peers = []

    def start(kind, **kwargs):
        peer = kind(**kwargs)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()
