"""Wake-ups between processes: one datagram socket per sleeping process under var/run/wake/.

A dispatcher or the reporter binds ``<kind>-<name>.sock`` and sleeps in ``Waiter.wait``;
anyone may call ``notify(run_dir, kind)`` to wake every process of that kind at once.  A
datagram is fire-and-forget: a full or absent receiver is ignored, because every sleeper
also wakes on its poll interval and loses nothing by missing one nudge.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
from pathlib import Path

DISPATCHER = "dispatcher"
REPORTER = "reporter"
MAX_SUN_PATH = 107  # bytes of a Unix socket path (sockaddr_un.sun_path less its NUL)
MAX_NAME = 64  # longest "/<kind>-<name>.sock" we expect; a longer name fails loudly at bind


def wake_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "wake"


def notify(run_dir: str | os.PathLike, kind: str) -> int:
    """Send a wake-up to every process of ``kind``; returns how many sockets took it."""
    directory = wake_dir(run_dir)
    delivered = 0
    try:
        names = [n for n in os.listdir(directory) if n.startswith(kind + "-")]
    except FileNotFoundError:
        return 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, _addressable(directory) as at:
        sock.setblocking(False)
        for name in names:
            with contextlib.suppress(OSError):  # dead process, or its buffer is full: fine
                sock.sendto(b"!", f"{at}/{name}")
                delivered += 1
    return delivered


@contextlib.contextmanager
def _addressable(directory: Path):
    """A prefix under which socket paths fit ``sun_path``.

    The directory itself, or, when a deep ASYNCMAIL_VAR_DIR makes it too long, the short
    ``/proc/self/fd/N`` alias of a descriptor held open for the duration (Linux).
    """
    if len(os.fsencode(directory)) + MAX_NAME <= MAX_SUN_PATH:
        yield str(directory)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class Waiter:
    """The receiving end: bind once, then ``wait(timeout)`` returns early on any wake-up."""

    def __init__(self, run_dir: str | os.PathLike, kind: str, name: str):
        directory = wake_dir(run_dir)
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.path = directory / f"{kind}-{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a previous incarnation that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with _addressable(directory) as at:
            self.sock.bind(f"{at}/{self.path.name}")
        self.sock.setblocking(False)
        self.signal_pair, self.previous_wakeup_fd = _signal_pair()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken (or signalled).  Drains wake-ups."""
        # A signal ends the wait too: Python retries an interrupted recv (PEP 475), so without
        # the wake-up fd a TERM or USR1 would only be seen when the timeout ran out.
        # poll, not select: select() cannot watch a descriptor numbered 1024 or above
        sockets = {sock.fileno(): sock for sock in [self.sock, *self.signal_pair[:1]]}
        poller = select.poll()
        for fd in sockets:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(max(timeout, 0.0) * 1000)
        for fd, _ in ready:
            with contextlib.suppress(BlockingIOError):
                while sockets[fd].recv(64):
                    pass
        return bool(ready)

    def close(self) -> None:
        if self.signal_pair:
            _unroute_signals(self.signal_pair[1].fileno(), self.previous_wakeup_fd)
            for sock in self.signal_pair:
                sock.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _signal_pair() -> tuple[tuple[socket.socket, ...], int]:
    """((read, write) sockets the interpreter writes to on every signal, the fd it replaced).

    Off the main thread signals cannot be routed: ((), -1).
    """
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    except ValueError:
        read.close()
        write.close()
        return (), -1
    return (read, write), previous


def _unroute_signals(ours: int, previous: int) -> None:
    """Hand the signal wake-up fd back to whoever had it, if it is still ours."""
    try:
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(previous if current == ours else current)
    except (ValueError, OSError):
        pass  # off the main thread, or the previous fd is closed: leave none
