"""The rules of the suppression list, shared by the dispatcher (refusals at send time) and the
bouncer (delivery status notifications): which failures say an address is dead.

Only a permanent failure about the address itself suppresses it: 5.1.x (bad mailbox, bad
domain, user unknown, RFC 3463) and 5.2.1 (mailbox disabled).  Other permanent failures
(5.7.x policy or spam blocks, 5.3.4 message too big, ...) concern one message, not the
address, and a temporary one (4.x.x) never suppresses.
"""

from __future__ import annotations

import re

SUPPRESSED = "suppressed"  # the text of a suppressed recipient in a report's `refused`
ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
DEAD_ADDRESS = re.compile(r"^5\.(?:1\.\d{1,3}|2\.1)$")


def enhanced_status(text: str | None) -> str | None:
    """The first RFC 3463 status code (``5.1.1``) in a reply or diagnostic, or None."""
    found = ENHANCED_STATUS.search(text or "")
    return ".".join(found.groups()) if found else None


def kills_address(status: str | None) -> bool:
    """True when a permanent failure with this status means the address does not work."""
    return bool(status and DEAD_ADDRESS.match(status))
