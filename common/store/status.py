"""A message's status, derived from its columns in exactly one place (Python and SQL side by
side); the names live in ``common.enums.Status``."""

from __future__ import annotations

from common.enums import Status

_PENDING = "sent_ts IS NULL AND error_ts IS NULL"
_LEASED = "lease_expires IS NOT NULL AND lease_expires > :now"

# The same derivation as status_of(), as SQL predicates over a messages row (bind :now).
STATUS_SQL = {
    Status.SENT: "sent_ts IS NOT NULL",
    Status.ERROR: "sent_ts IS NULL AND error_ts IS NOT NULL",
    Status.SENDING: f"{_PENDING} AND {_LEASED}",
    Status.DEFERRED: f"{_PENDING} AND NOT ({_LEASED}) AND deferred_ts > :now",
    Status.QUEUED: (
        f"{_PENDING} AND NOT ({_LEASED}) AND (deferred_ts IS NULL OR deferred_ts <= :now)"
    ),
}

STATUS_CASE_SQL = (
    "CASE " + " ".join(f"WHEN {STATUS_SQL[s]} THEN '{s.value}'" for s in Status) + " END"
)


def status_of(row: dict, now: float) -> Status:
    """The status of a messages row at time ``now``."""
    if row["sent_ts"] is not None:
        return Status.SENT
    if row["error_ts"] is not None:
        return Status.ERROR
    if row.get("lease_expires") is not None and row["lease_expires"] > now:
        return Status.SENDING
    if row["deferred_ts"] is not None and row["deferred_ts"] > now:
        return Status.DEFERRED
    return Status.QUEUED
