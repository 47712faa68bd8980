"""A real IMAP server for tests: Dovecot, configured in a temporary directory; and a proxy
that cuts the connection at a chosen moment.

    def test_something(dovecot):
        server = dovecot()                          # IMAP with STARTTLS on a free port
        server = dovecot(capability="IMAP4rev1 LITERAL+")  # no IDLE, no MOVE: the fallbacks
        server.deliver(dsn_mail("postfix.eml", message_id=..., recipient=..., sender=...))
        server.messages("processed")               # the raw mails of a folder
        config = make_config(**server.settings())  # [bounces] keys pointing at it

Dovecot runs with ``-F`` (foreground, our child) and its own config only (no /etc/dovecot),
a passwd-file with one user and a maildir; it is stopped after the test.  The tests that
need it are skipped, saying why, when the ``dovecot`` binary is not installed
(``apt-get install dovecot-imapd``; .ci/run installs it).

``Cutter(server.port)`` sits between the bouncer and Dovecot and closes both sides the first
time the server sends ``cut_reply`` (mid-fetch: ``b"BODY[]"``) or the client sends
``cut_command`` (``b"MOVE"``: after the mail was recorded, before it was moved).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from tests.support.procs import ROOT, free_port, wait_for

USER, PASSWORD = "bounces@example.net", "imap-secret"
DSN_FIXTURES = ROOT / "tests" / "fixtures" / "dsn"

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = asyncmail-test-{port}
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{dir}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={dir}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
{ssl}
{capability}
"""


def dsn_mail(name: str, *, message_id: str, recipient: str, sender: str) -> bytes:
    """A notification of tests/fixtures/dsn with its placeholders filled, CRLF line ends."""
    text = (DSN_FIXTURES / name).read_text()
    for placeholder, value in (("MESSAGE_ID", message_id), ("RECIPIENT", recipient),
                               ("SENDER", sender)):  # fmt: skip
        text = text.replace(f"@@{placeholder}@@", value)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def _accounts() -> dict[str, str]:
    """Who Dovecot's processes and the mail files run as: system users as root, else us."""
    if os.geteuid() == 0:
        return {"internal": "dovecot", "internal_group": "dovecot", "login": "dovenull",
                "mail_user": "nobody", "mail_group": "nogroup"}  # fmt: skip
    me = pwd.getpwuid(os.getuid())
    group = me.pw_gid
    return {"internal": me.pw_name, "internal_group": str(group), "login": me.pw_name,
            "mail_user": me.pw_name, "mail_group": str(group)}  # fmt: skip


class Dovecot:
    """One Dovecot instance serving one mailbox; see the module docstring."""

    def __init__(self, directory: Path, cert=None, capability: str | None = None):
        self.dir, self.port, self.tls_port = directory, free_port(), free_port()
        accounts = _accounts()
        (directory / "mail").mkdir(parents=True)
        shutil.chown(directory / "mail", accounts["mail_user"], accounts["mail_group"])
        (directory / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        ssl = "ssl = no"
        if cert is not None:
            ssl = f"ssl = yes\nssl_cert = <{cert.cert_path}\nssl_key = <{cert.key_path}"
        (directory / "dovecot.conf").write_text(CONF.format(
            dir=directory, port=self.port, tls_port=self.tls_port, ssl=ssl,
            capability=f"imap_capability = {capability}" if capability else "", **accounts,
        ))  # fmt: skip
        self._err = open(directory / "dovecot.err", "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [DOVECOT, "-c", str(directory / "dovecot.conf"), "-F"],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
        )
        try:
            wait_for(self._greets, timeout=20, message=f"dovecot on {self.port}")
        except AssertionError as exc:  # stopped here: the fixture never saw this server
            self.stop()
            raise AssertionError(f"{exc}; its log: {self.log()}") from None

    def _greets(self) -> bool:
        address = ("127.0.0.1", self.port)
        with contextlib.suppress(OSError), socket.create_connection(address, 1) as sock:
            return sock.recv(100).startswith(b"* OK")
        return False

    def log(self) -> str:
        """Dovecot's own log (start-up problems, logins)."""
        parts = [self.dir / "dovecot.log", self.dir / "dovecot.err"]
        return "".join(p.read_text(errors="replace") for p in parts if p.exists())

    def settings(self, **extra) -> dict:
        """The [bounces] configuration of a bouncer reading this mailbox (cleartext IMAP)."""
        return {"imap_host": "127.0.0.1", "imap_port": self.port, "imap_user": USER,
                "imap_password": PASSWORD, "imap_security": "none", **extra}  # fmt: skip

    @contextlib.contextmanager
    def client(self):
        """A logged-in imaplib connection of the test's own."""
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            imap.login(USER, PASSWORD)
            yield imap
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put a mail into a folder (APPEND), as the mail system delivers a notification."""
        with self.client() as imap:
            typ, data = imap.append(f'"{folder}"', None, None, raw)
            assert typ == "OK", data

    def messages(self, folder: str) -> list[bytes]:
        """The raw mails in a folder that are not flagged deleted (none if it does not exist)."""
        with self.client() as imap:
            if imap.select(f'"{folder}"', readonly=True)[0] != "OK":
                return []
            uids = imap.uid("SEARCH", None, "UNDELETED")[1][0].split()
            return [imap.uid("FETCH", uid, "(BODY.PEEK[])")[1][0][1] for uid in uids]

    def counts(self, *folders: str) -> dict[str, int]:
        """How many mails each folder holds."""
        return {folder: len(self.messages(folder)) for folder in folders}

    def stop(self) -> None:
        """Kill Dovecot and its children (one process group; a graceful stop takes a second
        and keeps nothing worth keeping), and wait for the master."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._err.close()


DOVECOT = shutil.which("dovecot") or next(
    (p for p in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot") if os.path.exists(p)), None
)


@pytest.fixture
def dovecot(tls_cert):
    """dovecot(tls=False, capability=None) -> Dovecot; every one stopped after the test.

    Its directory is not pytest's tmp_path: run as root, Dovecot reads the password file
    and the maildir as its own users, who cannot enter pytest's private (0700) directory.
    """
    if DOVECOT is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd), so no IMAP server")
    servers: list[Dovecot] = []
    home = Path(tempfile.mkdtemp(prefix="asyncmail-dovecot-"))
    home.chmod(0o755)

    def start(tls: bool = False, capability: str | None = None) -> Dovecot:
        server = Dovecot(home / str(len(servers)), tls_cert if tls else None, capability)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    shutil.rmtree(home, ignore_errors=True)


class Cutter:
    """A TCP hop in front of the IMAP server that cuts the link once, where it is told to."""

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_reply: bytes | None = None  # cut when the server's bytes contain this
        self.cut_command: bytes | None = None  # cut when the client's bytes contain this
        self.cuts = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.backend_port))
                with self._lock:
                    self.connections += 1
                    self._sockets += [client, server]
                pair = (client, server)
                threading.Thread(target=self._pump, args=(*pair, "reply"), daemon=True).start()
                threading.Thread(target=self._pump, args=(*pair[::-1], "command"),
                                 daemon=True).start()  # fmt: skip

    def _pump(self, a: socket.socket, b: socket.socket, direction: str) -> None:
        """Copy what ``b`` sends to ``a`` (reply: server to client; command: the reverse)."""
        with contextlib.suppress(OSError):
            while data := b.recv(65536):
                if self._should_cut(direction, data):
                    a.sendall(data[: len(data) // 2] if direction == "reply" else b"")
                    for sock in (a, b):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
                a.sendall(data)
        with contextlib.suppress(OSError):
            a.shutdown(socket.SHUT_WR)

    def _should_cut(self, direction: str, data: bytes) -> bool:
        with self._lock:
            marker = self.cut_reply if direction == "reply" else self.cut_command
            if marker is None or marker not in data:
                return False
            self.cut_reply = self.cut_command = None  # once
            self.cuts += 1
            return True

    def close(self) -> None:
        """Stop listening and close every link."""
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
