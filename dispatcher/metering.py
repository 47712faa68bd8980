"""The rate limits of one send: its account's windows and its tenant's tenant-wide ones.

Both are reserved in one step (``Ledger.reserve_all``): a send takes a slot in the account's
ledger and in the tenant's, or in neither, so no window of either ever holds more starts
than its limit, whatever the number of dispatchers.  Over a limit, the message is deferred
to the moment a slot frees, or failed when the limit's owner (the account, or the tenant
for a tenant-wide limit) says ``limit_behavior = reject``.
"""

from __future__ import annotations

from common import metrics, store
from common.enums import Next, Outcome
from common.ratelimit import WINDOWS, Ledger, Limits, Meter, Rebuild
from common.store.claims import Attempt, Transition

LIMIT_COLUMNS = tuple("limit_" + name for name, _ in WINDOWS)


def history(conn) -> Rebuild:
    """The ledger's rebuild: a meter's send starts as the attempts table recorded them."""

    def rebuild(meter: Meter, since: float) -> list[float]:
        if meter.whole:
            return store.attempts.tenant_send_starts(conn, meter.tenant_id, since)
        return store.attempts.send_starts(conn, meter.tenant_id, meter.account_id, since)

    return rebuild


class Metering:
    """Reserves send slots; remembers whether the last refusal was the tenant's limit."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.blocked: str | None = None  # the tenant whose tenant-wide limit held the last send

    def reserve(self, row: dict, account: dict | None, tenant: dict | None, now: float):
        """Take the send's slots and return None, or take none and return when they free."""
        self.blocked = None
        if not (_limited(account) or _limited(tenant)):
            return None  # the common case, checked without building a meter
        meters = [(Meter(row["tenant_id"], row["account_id"]), Limits.from_account(account))]
        whole = Limits.from_account(tenant)
        if whole:
            meters.append((Meter(row["tenant_id"], whole=True), whole))
        held = self.ledger.reserve_all(meters, now)
        if held is None:
            return None
        free_at, meter = held
        if meter.whole:
            self.blocked = row["tenant_id"]
        return free_at

    def held_back(self, row: dict, account: dict | None, tenant: dict | None, free_at: float,
                  now: float) -> Transition:  # fmt: skip
        """SENDING -> DEFERRED until ``free_at``, or -> ERROR when the limit rejects."""
        metrics.RATE_LIMITED.labels(*metrics.labels_of(row["tenant_id"], row["account_id"])).inc()
        owner = tenant if self.blocked else account
        what = "tenant-wide rate limit" if self.blocked else "rate limit"
        if (owner or {}).get("limit_behavior") == "reject":
            attempt = _attempt(row, now, Outcome.REJECTED, f"{what} exceeded")
            return Transition(attempt, Next.ERROR, now, error=f"{what} exceeded")
        attempt = _attempt(row, now, Outcome.DEFERRED, f"{what}: next slot in {free_at - now:.3f}s")
        return Transition(attempt, Next.DEFERRED, now, ready_at=free_at)


def _limited(row: dict | None) -> bool:
    """Whether an account or tenant row sets any ``limit_per_*``."""
    return row is not None and any(row.get(column) is not None for column in LIMIT_COLUMNS)


def _attempt(row: dict, now: float, outcome: Outcome, detail: str) -> Attempt:
    return Attempt(row["id"], row["account_id"], now, outcome, None, detail,
                   tenant_id=row["tenant_id"])  # fmt: skip
