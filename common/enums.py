"""Every named state of the service in one place: message status, attempt outcome, the next
state an attempt leads to, and priority.

The values are what the database stores and the API shows; changing one is a migration.
"""

from __future__ import annotations

import enum

# The tenant of everything stored before tenants, and of the admin token that names none
# (docs/tenants.md); the value is stored in every row that belongs to it.
DEFAULT_TENANT = "default"


class Status(enum.StrEnum):
    """A message's status, derived from its columns (``common.store.status``)."""

    QUEUED = "queued"  # ready now
    DEFERRED = "deferred"  # deferred_ts in the future (client's wish, retry delay or rate limit)
    SENDING = "sending"  # leased by a dispatcher
    SENT = "sent"  # terminal
    ERROR = "error"  # terminal


TERMINAL = frozenset({Status.SENT, Status.ERROR})


class Outcome(enum.StrEnum):
    """How one delivery attempt ended, as ``attempts.outcome`` records it."""

    SENT = "sent"  # the SMTP server accepted the message
    TEMPORARY = "temporary"  # nothing was delivered; retry later
    PERMANENT = "permanent"  # the server refused for good
    UNCERTAIN = "uncertain"  # the message was transmitted but its acceptance was never heard
    DEFERRED = "deferred"  # held back by the rate limit; not an attempt at the SMTP server
    REJECTED = "rejected"  # refused by the rate limit with limit_behavior = reject
    SUPPRESSED = "suppressed"  # every recipient is on the suppression list: nothing was sent


# Outcomes of attempts that began an SMTP transaction, and so reserved a rate-limit slot.
SEND_OUTCOMES = frozenset({Outcome.SENT, Outcome.TEMPORARY, Outcome.PERMANENT, Outcome.UNCERTAIN})
# Outcomes after which a copy may be with the server: a stale holder's such outcome still
# marks the message possible_duplicate.
MAYBE_DELIVERED = frozenset({Outcome.SENT, Outcome.UNCERTAIN})
# Outcomes that do not count as an attempt at the server (attempts column unchanged).
UNCOUNTED_OUTCOMES = frozenset({Outcome.DEFERRED, Outcome.REJECTED, Outcome.SUPPRESSED})


class Next(enum.StrEnum):
    """The state a message moves to after an attempt (``common.store.claims.record``)."""

    SENT = "sent"  # SENDING -> SENT
    ERROR = "error"  # SENDING -> ERROR
    RETRY = "retry"  # SENDING -> DEFERRED until the retry delay has passed
    DEFERRED = "deferred"  # SENDING -> DEFERRED until the rate limit frees a slot


FINAL_NEXT = frozenset({Next.SENT, Next.ERROR})  # the outcomes that owe a delivery report


class Priority(enum.IntEnum):
    """Claim order: lower first."""

    IMMEDIATE = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3

    @classmethod
    def parse(cls, value: object) -> Priority:
        """0-3 (also "0"-"3", as the reference accepts) or immediate/high/medium/low."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text.isdigit() and len(text) == 1:
                value = int(text)
            elif text.upper() in cls.__members__:
                return cls[text.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
            return cls(value)
        raise ValueError("must be 0-3 or immediate/high/medium/low")


PRIORITIES = tuple(Priority)  # claimed in this order
