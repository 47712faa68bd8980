"""The bounce mailbox over IMAP (imaplib): open it, watch it, fetch a mail, move it away.

imaplib in Python 3.11 has no IDLE (RFC 2177); it is driven here over imaplib's own
connection.  A wait must know, without blocking, whether the server has said anything, and
imaplib's buffered socket file cannot tell (a line may sit in its buffer while the socket
is quiet), so the connection classes below do imaplib's two reads (``readline`` and
``read``) from a buffer of their own, which ``ready()`` consults before select().

States of the connection:
  COMMANDS  after open(): search, fetch, move
  IDLING    after wait() sent IDLE and the server answered "+"; the server announces new
            mail with "* n EXISTS".  Any command first ends it (DONE, then the tagged OK).
  IDLING -> COMMANDS  every IDLE_RENEW at the latest (servers drop an IDLE after 30 min)
Servers without IDLE are searched every ``imap_poll_seconds`` instead (the caller's loop).

Handled mail is moved with MOVE (RFC 6851), else copied and flagged \\Deleted, and
expunged by UID only with UIDPLUS (RFC 4315): nothing else is ever expunged or deleted.
"""

from __future__ import annotations

import imaplib
import itertools
import select
import ssl
import time

from common import crypto
from common.config import Config

TIMEOUT = 30.0  # seconds for connect, and for each exchange to be answered whole
IDLE_RENEW = 25 * 60.0  # seconds: RFC 2177 lets a server end an IDLE after 30 minutes
MAX_FETCH_BYTES = 4 * 1024 * 1024  # of a mail: the status part comes before the original
RECV_BYTES = 65536
ERRORS = (OSError, imaplib.IMAP4.error, crypto.SecretError)  # the mailbox is unusable
DEFAULT_PORTS = {"tls": 993, "starttls": 143, "none": 143}
_idle_tags = (f"idle{n}".encode() for n in itertools.count(1))  # imaplib's tags are upper-case


class _Buffered:
    """imaplib's reads from a buffer of our own, so ``ready()`` sees what is waiting.

    Every read also runs against the deadline of the exchange in hand (the greeting, a
    command and its whole answer, a line announced during IDLE): a socket timeout bounds
    one read, and a server that drips its answer a byte at a time would hold the bouncer
    for ever, so each read waits only for what is left of ``TIMEOUT``.
    """

    def open(self, *args, **kwargs) -> None:
        self._pending = bytearray()
        self._deadline = time.monotonic() + TIMEOUT  # for the greeting
        super().open(*args, **kwargs)

    def exchange(self) -> None:
        """Start the clock of one exchange: its answer must be whole within TIMEOUT."""
        self._deadline = time.monotonic() + TIMEOUT
        self.sock.settimeout(TIMEOUT)

    def _command(self, name, *args):  # every imaplib command goes through here
        self.exchange()
        return super()._command(name, *args)

    def _fill(self) -> None:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise imaplib.IMAP4.abort(f"no whole answer within {TIMEOUT:g} s") from None
        if not data:
            raise imaplib.IMAP4.abort("socket error: EOF")
        self._pending += data

    def read(self, size: int) -> bytes:
        while len(self._pending) < size:
            self._fill()
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def readline(self) -> bytes:
        while (end := self._pending.find(b"\n")) < 0:
            if len(self._pending) > imaplib._MAXLINE:
                raise imaplib.IMAP4.error(f"got more than {imaplib._MAXLINE} bytes")
            self._fill()
        line = bytes(self._pending[: end + 1])
        del self._pending[: end + 1]
        return line

    def ready(self, timeout: float) -> bool:
        """True when the server has sent something, waiting up to ``timeout`` seconds."""
        if self._pending or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return True
        return bool(select.select([self.sock], [], [], timeout)[0])


class _Plain(_Buffered, imaplib.IMAP4):
    pass


class _Secure(_Buffered, imaplib.IMAP4_SSL):
    pass


def quoted(name: str) -> str:
    """A folder name as an IMAP string (config refuses quotes and backslashes in it)."""
    return f'"{name}"'


class Mailbox:
    """One logged-in connection with the bounce folder selected."""

    def __init__(self, imap, config: Config):
        self.imap, self.folder = imap, config.imap_folder
        self.capabilities = set(_ok(imap.capability())[0].decode().upper().split())
        for folder in (config.imap_processed_folder, config.imap_unmatched_folder):
            self._ensure(folder)
        _ok(imap.select(quoted(self.folder)))
        self._idle: tuple[bytes, float] | None = None  # (tag, when it began) while IDLING

    @classmethod
    def open(cls, config: Config, context: ssl.SSLContext | None = None) -> Mailbox:
        """Connect, secure, log in and select as configured; raises one of ERRORS."""
        password = crypto.unseal(config.imap_password, config.secret_key)
        security = config.imap_security
        port = config.imap_port or DEFAULT_PORTS[security]
        context = context or ssl.create_default_context()
        if security == "tls":
            imap = _Secure(config.imap_host, port, ssl_context=context, timeout=TIMEOUT)
        else:
            imap = _Plain(config.imap_host, port, timeout=TIMEOUT)
        try:
            if security == "starttls":
                _ok(imap.starttls(context))
            _ok(imap.login(config.imap_user, password))
            return cls(imap, config)
        except BaseException:
            imap.shutdown()
            raise

    @property
    def can_idle(self) -> bool:
        return "IDLE" in self.capabilities

    # -- COMMANDS ----------------------------------------------------------------------------
    def waiting(self) -> list[str]:
        """UIDs of the mails in the folder, oldest first (those flagged deleted excepted)."""
        self._end_idle()
        self.imap.untagged_responses.clear()  # imaplib keeps every EXISTS and EXPUNGE otherwise
        _ok(self.imap.noop())  # servers show a session new mail at NOOP (or IDLE), not SEARCH
        found = _ok(self.imap.uid("SEARCH", None, "UNDELETED"))[0] or b""
        return found.decode().split()

    def fetch(self, uid: str) -> bytes | None:
        """A mail's bytes (its first MAX_FETCH_BYTES), or None when it is gone."""
        self._end_idle()
        data = _ok(self.imap.uid("FETCH", uid, f"(BODY.PEEK[]<0.{MAX_FETCH_BYTES}>)"))
        return next((item[1] for item in data if isinstance(item, tuple)), None)

    def move(self, uid: str, folder: str) -> None:
        """Move a mail to another folder; never deletes it."""
        self._end_idle()
        if "MOVE" in self.capabilities:
            _ok(self.imap.uid("MOVE", uid, quoted(folder)))
            return
        _ok(self.imap.uid("COPY", uid, quoted(folder)))
        _ok(self.imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"))
        if "UIDPLUS" in self.capabilities:  # expunges this mail only, never someone else's
            _ok(self.imap.uid("EXPUNGE", uid))

    def _ensure(self, folder: str) -> None:
        if _ok(self.imap.list('""', quoted(folder))) == [None]:
            _ok(self.imap.create(quoted(folder)))

    # -- IDLING ------------------------------------------------------------------------------
    def wait(self, seconds: float, now: float) -> bool:
        """IDLE up to ``seconds``; True when new mail was announced or the IDLE is due for
        renewal (either way: search the folder now)."""
        if self._idle is None:
            self._begin_idle(now)
        elif now - self._idle[1] >= IDLE_RENEW:
            self._end_idle()
            return True
        deadline = time.monotonic() + seconds
        while self.imap.ready(max(0.0, deadline - time.monotonic())):
            self.imap.exchange()
            line = self.imap.readline()
            if line.startswith(b"* BYE"):
                raise imaplib.IMAP4.abort(line.decode(errors="replace").strip())
            if line.startswith(b"*") and b"EXISTS" in line.upper():
                self._end_idle()
                return True
        return False

    def _begin_idle(self, now: float) -> None:
        tag = next(_idle_tags)
        self.imap.exchange()
        self.imap.send(tag + b" IDLE\r\n")
        line = self.imap.readline()
        while line.startswith(b"* "):  # untagged news sent before the continuation
            line = self.imap.readline()
        if not line.startswith(b"+"):
            raise imaplib.IMAP4.error(f"IDLE refused: {line.decode(errors='replace').strip()}")
        self._idle = (tag, now)

    def _end_idle(self) -> None:
        if self._idle is None:
            return
        tag, _ = self._idle
        self._idle = None
        self.imap.exchange()
        self.imap.send(b"DONE\r\n")
        while not (line := self.imap.readline()).startswith(tag + b" "):
            pass  # untagged news: the caller searches the folder anyway
        if not line.startswith(tag + b" OK"):
            raise imaplib.IMAP4.error(f"IDLE ended badly: {line.decode(errors='replace')}")

    def close(self) -> None:
        """Log out if the link still works; close it in any case."""
        try:
            self._end_idle()
            self.imap.logout()
        except ERRORS:
            self.imap.shutdown()


def _ok(answer: tuple) -> list:
    """The data of an OK answer; raises imaplib's error for NO and BAD."""
    typ, data = answer
    if typ != "OK":
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        raise imaplib.IMAP4.error(f"{typ} {text}".strip())
    return data
