"""Real SMTP peers for tests: aiosmtpd servers in a background thread, and their fixtures.

The fixtures reach every test module through ``pytest_plugins`` (tests/conftest.py)::

    def test_something(smtp_server):
        peer = smtp_server()                      # plain SMTP, records every message
        peer = smtp_server("starttls", auth=("u", "p"))
        peer = smtp_server("tls", behavior=Behavior(rcpt={"x@example.com": "550 no"}))
        ... peer.host, peer.port, peer.subjects(), peer.received[0].message()["Subject"] ...

Kinds: ``plain``, ``starttls`` (STARTTLS required before MAIL), ``tls`` (implicit TLS).
``auth=(user, password)`` makes AUTH required (LOGIN/PLAIN, allowed without TLS so plain
servers can test it too).  ``Behavior`` scripts replies per recipient, the end-of-DATA
reply, dropping the connection after the message arrived, or delaying the reply.
``silent_server`` accepts TCP connections and never says a word (connect timeouts).
``Behavior(max_rcpt=N)`` answers 452 after N recipients per transaction; ``Behavior(gate=Gate())``
holds every end-of-DATA reply until the test opens the gate.  More hostile peers (a server
that greets with 421, a dripping HTTP source, an instance-metadata stand-in) are in
``tests/support/hostile.py``.
Every server records ``Received`` items with the time the message arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.procs import free_port

HOST = "127.0.0.1"


@dataclass
class Received:
    """One message as the server got it."""

    sender: str
    recipients: list[str]
    data: bytes  # exactly the bytes after DATA, dot-unstuffed, without the final dot
    ts: float  # time.time() when the end of DATA arrived
    peer_port: int = 0  # the client's source port: tells connections apart

    def message(self) -> EmailMessage:
        """The data parsed with the modern email policy."""
        return BytesParser(policy=policy.default).parsebytes(self.data)


@dataclass
class Behavior:
    """How a server answers; the defaults accept everything.

    rcpt:        address -> reply line for RCPT TO (e.g. "550 5.1.1 no such user")
    data_reply:  the reply to the end of DATA ("250 OK", "451 try later", "554 rejected")
    drop_after_data: close the connection once the message arrived, without replying
    data_delay:  seconds to wait before replying to the end of DATA (3600: never, in effect)
    pipelining:  advertise PIPELINING (RFC 2920); aiosmtpd reads commands in order anyway
    messages_per_connection: after this many messages a connection answers MAIL with 421
    max_rcpt:    recipients per transaction; the next ones get 452 (too many recipients)
    gate:        a Gate: each end-of-DATA reply waits until the test lets one through
    quit_delay:  seconds to wait before replying to QUIT (3600: never, in effect)
    """

    rcpt: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 OK queued"
    drop_after_data: bool = False
    data_delay: float = 0.0
    pipelining: bool = False
    messages_per_connection: int = 0
    max_rcpt: int = 0
    gate: Gate | None = None
    quit_delay: float = 0.0


class Gate:
    """Holds each end-of-DATA reply until the test opens it: ``open(0)`` lets the reply to
    the first message that arrived go, ``open(1)`` the second's (before or after it came)."""

    HOLD_LIMIT = 120.0  # seconds a reply is held at most, so no test waits forever

    def __init__(self):
        self._lock = threading.Lock()
        self._events: list[threading.Event] = []
        self._arrived = 0
        self._all_open = False

    def _event(self, index: int) -> threading.Event:
        with self._lock:
            while len(self._events) <= index:
                self._events.append(threading.Event())
                if self._all_open:
                    self._events[-1].set()
            return self._events[index]

    def open(self, index: int) -> None:
        """Let the reply to the ``index``-th message (0: the first to arrive) go."""
        self._event(index).set()

    def open_all(self) -> None:
        """Let every held and future reply go (teardown)."""
        with self._lock:
            self._all_open = True
            for event in self._events:
                event.set()

    async def wait(self) -> None:
        with self._lock:
            index, self._arrived = self._arrived, self._arrived + 1
        event = self._event(index)
        await asyncio.get_running_loop().run_in_executor(None, event.wait, self.HOLD_LIMIT)


class RecordingHandler:
    """aiosmtpd handler: records each message with its arrival time, replies per Behavior."""

    def __init__(self, behavior: Behavior | None = None):
        self.behavior = behavior or Behavior()
        self.received: list[Received] = []
        self.attempted: list[Received] = []  # every DATA, whatever the reply was

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.behavior.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        served = getattr(session, "served", 0)
        if (
            self.behavior.messages_per_connection
            and served >= self.behavior.messages_per_connection
        ):
            return "421 4.7.0 too many messages on this connection"
        session.served = served + 1
        envelope.mail_from, envelope.mail_options = address, list(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.behavior.rcpt.get(address)
        if reply is not None:
            return reply
        if self.behavior.max_rcpt and len(envelope.rcpt_tos) >= self.behavior.max_rcpt:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        if self.behavior.quit_delay:
            await asyncio.sleep(self.behavior.quit_delay)
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        item = Received(
            envelope.mail_from,
            list(envelope.rcpt_tos),
            bytes(envelope.original_content or envelope.content),
            time.time(),
            session.peer[1] if session.peer else 0,
        )
        self.attempted.append(item)
        if self.behavior.drop_after_data:
            server.transport.abort()
            return "250 never seen"
        if self.behavior.data_delay:
            await asyncio.sleep(self.behavior.data_delay)
        if self.behavior.gate is not None:
            await self.behavior.gate.wait()
        if self.behavior.data_reply.startswith("2"):
            self.received.append(item)
        return self.behavior.data_reply


class Peer:
    """A running server: where it listens and what it received."""

    def __init__(self, controller: Controller, handler: RecordingHandler, kind: str):
        self.controller, self.handler, self.kind = controller, handler, kind
        self.host, self.port = HOST, controller.port

    @property
    def received(self) -> list[Received]:
        """Messages the server accepted, in arrival order."""
        return self.handler.received

    def subjects(self) -> list[str]:
        """The Subject of each accepted message, in arrival order (factories.message: its id)."""
        return [r.message()["Subject"] for r in list(self.received)]

    def account(self, account_id: str = "acct", **extra) -> dict:
        """An ``accounts`` row pointing at this server (for store.accounts.upsert)."""
        row = {"id": account_id, "host": self.host, "port": self.port}
        row.update({"use_tls": self.kind == "tls", "starttls": self.kind == "starttls"})
        row.update(extra)
        return row

    def stop(self) -> None:
        """Stop the server (idempotent); held replies go first."""
        if self.handler.behavior.gate is not None:
            self.handler.behavior.gate.open_all()
        with contextlib.suppress(Exception):
            self.controller.stop()


@dataclass(frozen=True)
class Cert:
    """A self-signed certificate for 127.0.0.1 and localhost."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_cert(directory: Path) -> Cert:
    """Generate a key and a self-signed certificate valid for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Cert(cert_path, key_path)


def _authenticator(user: str, password: str):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode() == user and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    return check


class _QuietController(Controller):
    """aiosmtpd warns on every connection when AUTH is allowed without STARTTLS: hush."""

    def factory(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().factory()


def start_server(
    kind: str = "plain",
    *,
    cert: Cert | None = None,
    auth: tuple[str, str] | None = None,
    behavior: Behavior | None = None,
    port: int | None = None,
) -> Peer:
    """Start a server of ``kind`` (plain, starttls, tls) in a thread; stop it with .stop()."""
    handler = RecordingHandler(behavior)
    params: dict = {"ready_timeout": 10}
    if kind in ("starttls", "tls") and cert is None:
        raise ValueError(f"a {kind} server needs a cert (make_cert or the tls_cert fixture)")
    if kind == "tls":
        params["ssl_context"] = cert.server_context()
    elif kind == "starttls":
        params.update(tls_context=cert.server_context(), require_starttls=True)
    if auth is not None:
        params.update(
            auth_required=True,
            auth_require_tls=kind == "starttls",  # implicit TLS is not seen as TLS here
            authenticator=_authenticator(*auth),
        )
    controller = _QuietController(handler, hostname=HOST, port=port or free_port(), **params)
    controller.start()
    return Peer(controller, handler, kind)


class SilentServer:
    """Accepts TCP connections and never sends a byte: the client's timeouts fire."""

    def __init__(self):
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.host = HOST
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def account(self, account_id: str = "silent", **extra) -> dict:
        """An ``accounts`` row pointing at this server."""
        return {"id": account_id, "host": self.host, "port": self.port, **extra}

    def stop(self) -> None:
        """Close the listening socket and every accepted connection."""
        self.sock.close()
        for conn in self.accepted:
            conn.close()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> Cert:
    """One self-signed certificate for the whole session."""
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(tls_cert):
    """smtp_server(kind="plain", auth=None, behavior=None) -> Peer; all stopped at teardown."""
    peers: list[Peer] = []

    def start(kind: str = "plain", **kwargs) -> Peer:
        peer = start_server(kind, cert=tls_cert, **kwargs)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def silent_server():
    """A TCP server that never answers."""
    server = SilentServer()
    yield server
    server.stop()
