"""The dispatcher's side of the per-account circuit breaker (``store.circuits``).

A connection failure (refused, timed out, TLS, a 554 greeting, 421, an AUTH refusal)
opens the account's circuit for a backoff; the dispatcher gives the rest of the account's
claim back at once.  A half-open circuit's probe closes it when it gets through, and
leaves it half-open when it never reached the server (an attachment or the rate limit
held it), so the next claim probes at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from common import metrics, store
from common.logs import fields
from common.store.claims import AccountKey, Attempt
from dispatcher.outcomes import label
from dispatcher.smtp import ACCOUNT_CODES, Phase, Result

logger = logging.getLogger(__name__)

# Backoff: 5 s after the first connection failure in a row, doubling up to a minute: an
# outage costs one probe per minute per account, a blip costs seconds.
FIRST = 5.0
MAXIMUM = 60.0
JITTER = 0.2  # so the dispatchers of a host do not probe in lockstep


def reached(result: Result) -> bool:
    """Did the server take part in a transaction?  Not when connecting failed (refused,
    timed out, TLS, a 554 greeting), nor on 421 (closing) or an account code (AUTH)."""
    return not (result.phase is Phase.CONNECT or result.code == 421 or result.code in ACCOUNT_CODES)


class Breaker:
    """Opens and closes account circuits for one dispatcher."""

    def __init__(self, conn, clock: Callable[[], float], rng: random.Random):
        self.conn, self.clock, self.rng = conn, clock, rng

    def trip(self, account: AccountKey, attempt: Attempt) -> float:
        """Open the account's circuit after ``attempt`` failed to connect; when it reopens."""
        now = self.clock()
        until = store.circuits.trip(self.conn, *account, now, attempt.ts, attempt.detail,
                                    self.backoff)  # fmt: skip
        metrics.CIRCUIT_OPENED.labels(*metrics.labels_of(*account)).inc()
        logger.warning(fields(event="circuit_open", account=label(*account),
                              seconds=round(until - now, 1), reason=attempt.detail))  # fmt: skip
        return until

    def probed(self, account: AccountKey, got_through: bool | None) -> None:
        """A half-open circuit's probe is over: closed if it got through, else probe again."""
        if got_through:
            store.circuits.close(self.conn, *account)
        else:
            store.circuits.unprobed(self.conn, *account, self.clock())

    def backoff(self, failures: int) -> float:
        """Seconds a circuit stays open after ``failures`` connection failures in a row."""
        seconds = min(MAXIMUM, FIRST * 2 ** (failures - 1))
        return seconds * self.rng.uniform(1 - JITTER, 1 + JITTER)
