"""The rows a dispatcher holds, and their renewal while it works on them.

The main thread says what it holds (``hold`` at the claim, ``drop`` once an outcome or a
release is committed) and which message is in hand (``current``); the guard's thread calls
``renew`` every quarter lease, on a connection of its own, pushing every held row's lease a
full ``lease_seconds`` ahead.  If the row in hand turns out to be taken over (its lease ran
out while this process could not renew it, e.g. stopped by SIGSTOP or a database locked for
too long), or if the lease is about to run out and cannot be renewed, the attempt in hand
is cut at once: a stale holder stops talking to the server as early as it can, and its
outcome is refused by the store's fencing anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common import store
from common.logs import fields
from common.store.claims import Key

logger = logging.getLogger(__name__)

RENEW_FRACTION = 4  # renew every lease/4: three renewals may fail before the lease runs out
BUSY_FRACTION = 8  # the renewal waits at most lease/8 for a locked database, then retries


class Leases:
    """What this dispatcher holds; renewed from the guard's thread."""

    def __init__(
        self,
        connect: Callable[[], object],
        owner: str,
        lease_seconds: float,
        interrupt: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        renewed: Callable[[object], None] = lambda conn: None,
    ):
        self.connect, self.owner, self.lease_seconds = connect, owner, lease_seconds
        self.interrupt, self.clock = interrupt, clock
        self.renewed = renewed  # called with the renewal's connection after each renewal
        self.expires = 0.0  # the lease of every held row runs at least until this time
        self.current: Key | None = None  # the message in hand, while its I/O runs
        self._held: set[Key] = set()
        self._taken: set[Key] = set()  # held rows a renewal found taken over
        self._lock = threading.Lock()
        self._conn = None

    @property
    def period(self) -> float:
        """Seconds between renewals."""
        return self.lease_seconds / RENEW_FRACTION

    def hold(self, ids: list[Key], expires: float) -> None:
        """A claim took these rows, leased until ``expires``."""
        with self._lock:
            self._held.update(ids)
            self.expires = expires

    def drop(self, ids: list[Key]) -> None:
        """These rows' outcomes or releases are committed: no longer ours to renew."""
        with self._lock:
            self._held.difference_update(ids)
            self._taken.difference_update(ids)

    def taken(self, message_id: Key) -> bool:
        """True once a renewal found this held row taken over (do not start sending it)."""
        return message_id in self._taken  # one atomic read: no lock on the per-message path

    def fresh(self) -> bool:
        """True while more than a renewal period of the lease is left (safe to start I/O)."""
        return self.clock() < self.expires - self.period

    def renew(self) -> None:
        """Push every held row's lease forward (runs in the guard's thread)."""
        with self._lock:
            ids, current = sorted(self._held), self.current
        if not ids:
            return
        expires = self.clock() + self.lease_seconds
        try:
            lost = store.claims.extend_lease(self._connection(), ids, self.owner, expires)
        except Exception as exc:  # a locked or failing database: the lease keeps running
            logger.warning(fields(event="lease_renewal_failed", reason=repr(exc)))
            if not self.fresh():
                self.interrupt("the lease could not be renewed before it ran out")
            return
        with self._lock:
            self.expires = expires
            self._taken.update(lost)
        self.renewed(self._conn)
        if current is not None and current in lost and current == self.current:
            logger.warning(fields(event="lease_lost", tenant=current[0], id=current[1]))
            self.interrupt("the lease was taken over by another dispatcher")

    def _connection(self):
        if self._conn is None:
            self._conn = self.connect()
            self._conn.set_busy_timeout(int(self.lease_seconds * 1000 / BUSY_FRACTION))
        return self._conn

    def close(self) -> None:
        """Close the renewal connection (shutdown; the guard's thread has stopped)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
