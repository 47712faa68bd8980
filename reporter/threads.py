"""Each tenant's report stream in a thread of its own (the reporter process).

A stream's POST may wait for its upstream up to the client's read timeout (30 s); in its own
thread that wait holds back no other tenant's reports, nor the main thread's heartbeat,
checkpoints and purges.  Each thread has its own database connection (an apsw connection
is never shared between threads here) and its own HTTP session.  Signals stay with the main
thread: it wakes the streams after every turn (a wake-up datagram from the dispatchers, or
its poll) and tells them to stop; a stream checks between posts, so a stream held by a
hanging upstream ends at the latest when that request times out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.config import Config
from common.logs import fields
from reporter.stream import Stream

logger = logging.getLogger(__name__)

JOIN_SECONDS = 35.0  # at shutdown: above the client's read timeout, below stopwaitsecs


class Threads:
    """Starts, wakes and stops stream threads, one per tenant."""

    def __init__(self, connect: Callable[[], object], clock: Callable[[], float] = time.time):
        self.connect, self.clock = connect, clock
        self.threads: dict[str, _StreamThread] = {}
        self.ended: list[_StreamThread] = []  # stopped, maybe still finishing a request

    def start(self, tenant: str, config: Config, make_client) -> None:
        """A new thread for the tenant's stream."""
        thread = _StreamThread(tenant, config, make_client, self.connect, self.clock)
        self.threads[tenant] = thread
        thread.start()

    def stop(self, tenant: str) -> None:
        """Tell the tenant's thread to end (it is not waited for: it may be in a request)."""
        thread = self.threads.pop(tenant, None)
        if thread is not None:
            thread.stop()
            self.ended.append(thread)
        self.ended = [t for t in self.ended if t.is_alive()]

    def wake_all(self) -> None:
        """Let every stream look for outcomes now."""
        for thread in self.threads.values():
            thread.woken.set()

    def close(self, timeout: float = JOIN_SECONDS) -> None:
        """Stop every thread and wait for them, at most ``timeout`` seconds in all."""
        for tenant in list(self.threads):
            self.stop(tenant)
        deadline = time.monotonic() + timeout
        for thread in self.ended:
            thread.join(max(0.0, deadline - time.monotonic()))


class _StreamThread(threading.Thread):
    """Runs one stream: a turn, then sleep until woken or its own time comes."""

    def __init__(self, tenant: str, config: Config, make_client, connect, clock):
        super().__init__(name=f"report-{tenant}", daemon=True)  # never keeps the process up
        self.tenant, self.config, self.make_client = tenant, config, make_client
        self.connect, self.clock = connect, clock
        self.woken = threading.Event()
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        self.woken.set()

    def run(self) -> None:
        conn = self.connect()
        stream = Stream(self.tenant, self.config, conn, self.clock(), self.make_client(self.config))
        try:
            while not self.stopping:
                busy = self._turn(stream)
                if not busy and not self.stopping:
                    self.woken.wait(stream.idle_seconds(self.clock()))
                    self.woken.clear()
        finally:
            stream.close()
            conn.close()

    def _turn(self, stream: Stream) -> bool:
        try:
            return stream.run_once(self.clock())
        except Exception:  # the thread's loop boundary: log it, sleep, try again
            logger.exception(fields(event="turn_failed", tenant=self.tenant))
            return False
