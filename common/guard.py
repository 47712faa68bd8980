"""The watchdog beside a thread doing network I/O: deadlines that cut it, and a periodic task.

Used by the dispatcher (SMTP exchanges, attachment downloads, lease renewal) and by the
reporter (each POST to a report upstream).  Socket timeouts bound each read or write, not
an exchange: a server that answers one byte every few seconds, or a reply that never comes
within a 600 s command timeout, would hold the dispatcher and outlive its lease.  So every
network exchange runs ``within`` a deadline, and the connections it uses are ``track``-ed;
when the deadline passes, this thread shuts their sockets down, the blocked call in the
main thread fails at once, and the exchange ends with whatever outcome its phase gives
(``cut`` says why).

The same thread runs the lease renewal while a claim is held (``every``), so a long
attempt keeps its rows: a thread rather than renewals between SMTP phases, because the
longest waits (the body of a large message, the reply to its final dot, a slow download)
are single blocking calls.  The renewal has its own database connection (an apsw
connection is never shared between threads here), and the thread never touches the main
thread's objects except to shut a socket down.  Signal handlers stay in the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from common.logs import fields

logger = logging.getLogger(__name__)

TICK = 0.1  # seconds between checks while a deadline or a renewal is pending (cut precision)


class Guard:
    """Cuts tracked connections at the deadline in force; runs a periodic task meanwhile."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.cut: str | None = None  # why the current exchange was cut, until the next one
        self._deadlines: list[tuple[float, str]] = []  # nested: the tightest is in force
        self._tracked: list = []  # objects with a .sock (smtplib, http.client), or sockets
        self._task: Callable[[], None] | None = None
        self._every = 0.0
        self._task_due = 0.0
        self._lock = threading.Lock()  # a plain lock: taken twice for every message sent
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._wakes_at: float | None = None  # when the thread's sleep ends (None: untimed)
        self._closed = False

    # -- the main thread's side ---------------------------------------------------------------
    def within(self, seconds: float, reason: str) -> _Deadline:
        """A context: its block runs under a deadline ``seconds`` from now (an outer one in
        force may be sooner)."""
        return _Deadline(self, self.clock() + seconds, reason)

    def _enter(self, deadline: float, reason: str) -> None:
        with self._lock:
            if not self._deadlines:
                self.cut, self._tracked = None, []
            outer = self._deadlines[-1] if self._deadlines else None
            self._deadlines.append(
                (deadline, reason) if outer is None or deadline < outer[0] else outer
            )
            self._wake(deadline)

    def _exit(self) -> None:
        with self._lock:
            self._deadlines.pop()
            if not self._deadlines:
                self._tracked = []

    def remaining(self) -> float | None:
        """Seconds left under the deadline in force (None: no deadline)."""
        with self._lock:
            return None if not self._deadlines else self._deadlines[-1][0] - self.clock()

    def track(self, connection) -> None:
        """Cut ``connection`` (a socket, or anything with a ``sock``) at the deadline."""
        with self._lock:
            if self._deadlines:
                self._tracked.append(connection)
                if self.cut is not None:  # already past the deadline: no new exchange
                    _shut(connection)

    def every(self, seconds: float, task: Callable[[], None]) -> None:
        """Run ``task`` in the watchdog thread every ``seconds`` (the lease renewal)."""
        with self._lock:
            self._task, self._every = task, seconds
            self._task_due = self.clock() + seconds
            self._wake(self._task_due)

    def interrupt(self, reason: str) -> None:
        """Cut the tracked connections now (from the task: the lease is lost)."""
        with self._lock:
            if self._deadlines and self.cut is None:
                self._cut(reason)

    def close(self) -> None:
        """Stop the thread (shutdown)."""
        with self._lock:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    # -- the watchdog thread ------------------------------------------------------------------
    def _wake(self, due: float) -> None:
        """Start the thread on first use; wake it if it would sleep past ``due`` (a notify
        per message would cost a thread switch per message: most find it ticking anyway)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="guard", daemon=True)
            self._thread.start()
        if self._wakes_at is None or self._wakes_at > due:
            self._changed.notify()

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                sleep = self._sleep()
                self._wakes_at = None if sleep is None else self.clock() + sleep
                self._changed.wait(sleep)
                now = self.clock()
                if self._deadlines and self.cut is None and now >= self._deadlines[-1][0]:
                    self._cut(self._deadlines[-1][1])
                if self._task is not None and now >= self._task_due:
                    self._task_due = now + self._every
                    self._run_task()

    def _sleep(self) -> float | None:
        """How long the thread may sleep: a tick under a deadline, else until the task."""
        if self._deadlines:
            return TICK
        if self._task is not None:
            return max(0.0, self._task_due - self.clock())
        return None

    def _run_task(self) -> None:
        task = self._task
        self._lock.release()  # the task writes to the database: never block the main thread
        try:
            task()
        except Exception:
            logger.exception(fields(event="guard_task_failed"))
        finally:
            self._lock.acquire()

    def _cut(self, reason: str) -> None:
        self.cut = reason
        logger.warning(fields(event="attempt_cut", reason=reason))
        for connection in self._tracked:
            _shut(connection)


class _Deadline:
    """``Guard.within``'s context (a class: it is entered for every message sent)."""

    __slots__ = ("guard", "deadline", "reason")

    def __init__(self, guard: Guard, deadline: float, reason: str):
        self.guard, self.deadline, self.reason = guard, deadline, reason

    def __enter__(self) -> None:
        self.guard._enter(self.deadline, self.reason)

    def __exit__(self, *exc) -> None:
        self.guard._exit()


def tracking_pool(pool_class: type, track: Callable[[object], None]) -> type:
    """A urllib3 connection pool class whose lent connections go to ``track``.

    For the HTTP clients that bound each read only (requests, boto3): every connection a
    request uses, new or kept alive, is handed over before it is used, so the deadline in
    force can shut its socket down.
    """

    class TrackingPool(pool_class):
        def _get_conn(self, timeout=None):
            connection = super()._get_conn(timeout)
            track(connection)
            return connection

    return TrackingPool


def _shut(connection) -> None:
    """Shut a socket down (both ways) so a call blocked on it in another thread returns."""
    sock = connection if isinstance(connection, socket.socket) else connection.sock
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # the plain socket's method: SSLSocket.shutdown would also drop its TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
