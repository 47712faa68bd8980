"""Wake-ups between processes: one datagram socket per sleeping process under var/run/wake/.

A dispatcher or the reporter binds ``<kind>-<name>.sock`` and sleeps in ``Waiter.wait``;
anyone may call ``notify(run_dir, kind)`` to wake every process of that kind at once.  A
datagram is fire-and-forget: a full or absent receiver is ignored, because every sleeper
also wakes on its poll interval and loses nothing by missing one nudge.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

DISPATCHER = "dispatcher"
REPORTER = "reporter"


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
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            with contextlib.suppress(OSError):  # dead process, or its buffer is full: fine
                sock.sendto(b"!", str(directory / name))
                delivered += 1
    return delivered


class Waiter:
    """The receiving end: bind once, then ``wait(timeout)`` returns early on any wake-up."""

    def __init__(self, run_dir: str | os.PathLike, kind: str, name: str):
        directory = wake_dir(run_dir)
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.path = directory / f"{kind}-{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a previous incarnation that was killed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken.  Drains queued wake-ups."""
        self.sock.settimeout(max(timeout, 0.0))
        try:
            self.sock.recv(64)
        except (TimeoutError, BlockingIOError):
            return False
        except InterruptedError:
            return True
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(64):
                pass
        return True

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
