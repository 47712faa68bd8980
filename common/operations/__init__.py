"""Operator actions, written once: the API's routes and the ``asyncmail`` commands call these.

Each takes the database connection and the configuration, does the whole action (store,
wake-ups) and returns what both callers show.  A refusal raises ``Refused`` with a sentence
a person can act on and a ``kind`` the caller maps to its own answer (HTTP status or exit
code).

Every action on accounts, messages and suppressions names its tenant.  The service-wide ones
(status, run-now, suspend/activate, cleanup) take ``tenant=None`` for the whole service (the
admin naming no tenant), or a tenant for that tenant alone.  The actions on tenants
themselves are in ``common.operations.tenants``.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field

from common import crypto, replication, store, wakeup
from common.addresses import parse_address_list
from common.config import Config
from common.enums import Status
from common.models import Account
from common.ratelimit import WINDOWS, Ledger, Limits, Meter

MAX_SECONDS = 2**63 - 1  # an age larger than any SQLite integer is not a real age
# A process beats every second between units of work, and between the messages of a batch;
# a dispatcher also beats from its lease renewal while a long attempt runs within its
# deadline, and a report POST lasts at most 30 s.  Silent for 60 s, it is stuck or gone.
STALE_AFTER = 60.0
RETRY_STATUSES = (Status.ERROR, Status.DEFERRED)
# A healthy replica is at most two sync_intervals behind (Litestream syncs on a tick even when
# idle); this far behind, the recovery point promised in docs/scaling.md no longer holds.
REPLICATION_LAG_LIMIT = 60.0
# Reading a ledger holds its lock ~1 µs per slot, and the dispatchers wait meanwhile: past
# this many slots (the largest limit) usage counts the attempts table instead (~10 ms cap).
LEDGER_READ_MAX = 10_000


class Refusal(enum.StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"


class Refused(Exception):
    """The action was not done; ``str(exc)`` says why and what to do instead."""

    def __init__(self, message: str, kind: Refusal):
        super().__init__(message)
        self.kind = kind


def status(conn, config: Config, now: float, tenant: str | None = None) -> dict:
    """The scheduler switch, message counts and every process's heartbeat: of the whole
    service with a breakdown per tenant (``tenant`` None), or of one tenant."""
    active = store.settings.is_active(conn, config.active)
    answer = {
        "active": active,
        "test_mode": config.test_mode,
        **_queue(conn, now, tenant),
        "processes": heartbeats(conn, now),
        "circuits": store.circuits.list_all(conn, now, tenant),
    }
    if tenant is None:
        answer["replication"] = replication.state(config, now)
        answer["tenants"] = [
            {"id": t["id"], "name": t["name"], "active": t["active"],
             "dispatching": t["dispatching"], **_queue(conn, now, t["id"]),
             "unreported": store.reports.unreported_count(conn, t["id"])}
            for t in store.tenants.list_all(conn)
        ]  # fmt: skip
    else:
        switches = store.tenants.get(conn, tenant)
        answer["tenant"] = tenant
        answer["active"] = active and switches["active"] and switches["dispatching"]
    return answer


def _queue(conn, now: float, tenant: str | None) -> dict:
    """Counts per status and priority, and the oldest ready message's wait."""
    return {
        "counts": store.messages.status_counts(conn, now, tenant),
        "pending_by_priority": store.messages.pending_by_priority(conn, tenant),
        "oldest_ready_age_seconds": round(store.messages.oldest_ready_age(conn, now, tenant), 3),
    }


def heartbeats(conn, now: float) -> list[dict]:
    """Every process's last heartbeat, with its age and whether it is stale."""
    beats = store.heartbeats.list_all(conn, now)
    return [{**beat, "stale": beat["age_seconds"] > STALE_AFTER} for beat in beats]


def health(processes: list[dict], supervisor_runs: bool, bouncer: bool = False) -> list[str]:
    """What makes the service unhealthy (nothing: healthy), from ``heartbeats()``.

    A stale heartbeat always counts.  While supervisord runs on this var dir, a dispatcher
    and the reporter (and with ``bouncer``, a bounce mailbox configured, the bouncer) must
    also have beaten recently; without it (never started, or before the first heartbeat)
    nothing is expected.
    """
    problems = [
        f"{p['process']} ({p['kind']}) last beat {p['age_seconds']:.0f} s ago "
        f"(stale after {STALE_AFTER:.0f} s)"
        for p in processes
        if p["stale"]
    ]
    if supervisor_runs:
        alive = {p["kind"] for p in processes if not p["stale"]}
        problems += [
            f"No live {kind}: none has beaten in the last {STALE_AFTER:.0f} s."
            for kind in ("dispatcher", "reporter", *(("bouncer",) if bouncer else ()))
            if kind not in alive
        ]
    return problems


def replication_problems(state: dict, supervisor_runs: bool) -> list[str]:
    """What is wrong with replication (nothing: off, or healthy), from ``status()``."""
    if not state["enabled"] or not supervisor_runs:
        return []
    if not state["up"]:
        return [f"replication: {state['problem']}"]
    lag = state["lag_seconds"]
    if lag is not None and lag > REPLICATION_LAG_LIMIT:
        return [
            f"replication: the replica is {lag:.0f} s behind (more than "
            f"{REPLICATION_LAG_LIMIT:.0f} s); see var/log/litestream.log"
        ]
    return []


@dataclass(frozen=True)
class RunNow:
    woken: int
    flushed: int | None = None  # with flush: messages pulled forward from a retry wait
    probing: int | None = None  # with flush: accounts whose open circuit is probed at once


def run_now(
    conn, config: Config, now: float, flush: bool = False, tenant: str | None = None
) -> RunNow:
    """Record the request and wake every dispatcher and the reporter.

    With ``flush``, messages waiting for a retry become ready first (``retry`` of every
    deferred message, attempts kept) and every open circuit is probed at once, so a server
    back from an outage gets them now: the tenant's, or with ``tenant`` None every tenant's.
    """
    flushed = probing = None
    if flush:
        tenants = [tenant] if tenant else [t["id"] for t in store.tenants.list_all(conn)]
        flushed = sum(
            retry(conn, config, t, now, status=Status.DEFERRED.value).requeued for t in tenants
        )
        probing = store.circuits.probe_now(conn, now, tenant)
    store.settings.record_run_now(conn, now, tenant)
    woken = wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return RunNow(woken + wakeup.notify(config.run_dir, wakeup.REPORTER), flushed, probing)


@dataclass(frozen=True)
class Retry:
    requeued: int
    attempts: str  # "reset" (a full set of retries again) or "kept"
    not_found: list[str] = field(default_factory=list)  # with ids: unknown ids
    not_retryable: list[str] = field(default_factory=list)  # with ids: sent, queued, in flight


def retry(
    conn,
    config: Config,
    tenant: str,
    now: float,
    *,
    ids: list[str] | None = None,
    account_id: str | None = None,
    status: str | None = None,
    reset_attempts: bool = False,
) -> Retry:
    """Requeue errored messages, and messages waiting for a retry, so they are sent now.

    Select by ``ids``, or by ``account_id`` and/or ``status`` (error or deferred).  A message
    deferred by its client's own deferred_ts (never attempted) is not a retry: it is kept.
    """
    statuses = _retry_statuses(ids, account_id, status)
    if account_id is not None:
        _account(conn, tenant, account_id)
    chosen = (
        ids
        if ids is not None
        else store.messages.retryable_ids(conn, tenant, now, statuses, account_id)
    )
    requeued = store.messages.requeue(conn, tenant, chosen, now, reset_attempts)
    done = Retry(len(requeued), "reset" if reset_attempts else "kept")
    if ids is not None:
        existing = store.messages.existing_ids(conn, tenant, ids)
        taken = set(requeued)
        done.not_found.extend(i for i in dict.fromkeys(ids) if i not in existing)
        done.not_retryable.extend(i for i in existing if i not in taken)
    if requeued:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return done


def _retry_statuses(ids, account_id, status) -> tuple[Status, ...]:
    if ids is not None and (account_id is not None or status is not None):
        raise Refused(
            "give either 'ids', or 'account_id' and/or 'status', not both.", Refusal.INVALID
        )
    if ids is None and account_id is None and status is None:
        raise Refused(
            "say which messages: 'ids', 'account_id' or 'status' (error or deferred).",
            Refusal.INVALID,
        )
    if status is None:
        return RETRY_STATUSES
    if status not in {s.value for s in RETRY_STATUSES}:
        raise Refused("'status' must be 'error' or 'deferred'.", Refusal.INVALID)
    return (Status(status),)


def _account(conn, tenant: str, account_id: str) -> dict:
    """The tenant's account, or Refused (NOT_FOUND)."""
    account = store.accounts.get(conn, tenant, account_id)
    if account is None:
        raise Refused(
            f"No account {account_id!r}; GET /accounts (asyncmail accounts list) lists them.",
            Refusal.NOT_FOUND,
        )
    return account


def usage(conn, config: Config, tenant: str, account_id: str | None, now: float) -> dict:
    """An account's sends in each rate-limit window against its limit (None: the [smtp] one).

    ``used`` is what the rate-limit ledger counts (it also holds sends still in flight), or
    the recorded attempts where they prove more (a ledger not rebuilt yet after a reboot,
    or one too large to read while dispatchers wait for it).
    """
    account = None if account_id is None else _account(conn, tenant, account_id)
    limits = Limits.from_account(account)
    windows = [s for _, s in WINDOWS]
    recorded = store.attempts.sends_in_windows(conn, tenant, account_id, now, windows)
    readable = limits and limits.capacity <= LEDGER_READ_MAX
    ledger = Ledger(config.ratelimit_dir).starts(Meter(tenant, account_id)) if readable else []

    def window(name: str, seconds: float) -> dict:
        limit = getattr(limits, name)
        in_window = [t for t in ledger if t > now - seconds]
        used = max(recorded[seconds], len(in_window))
        entry = {"window": name, "seconds": int(seconds), "limit": limit, "used": used}
        entry["remaining"] = None if limit is None else max(0, limit - used)
        entry["free_at"] = None
        if limit is not None and used >= limit:  # full: wait for the limit-th latest start
            nth = (
                in_window[-limit]
                if len(in_window) >= limit
                else store.attempts.nth_latest_send(conn, tenant, account_id, limit, now - seconds)
            )
            entry["free_at"] = None if nth is None else math.ceil(nth + seconds)
        return entry

    return {
        "account_id": account_id,
        "limit_behavior": account["limit_behavior"] if account else "defer",
        "windows": [window(name, seconds) for name, seconds in WINDOWS],
    }


def set_active(conn, config: Config, active: bool, tenant: str | None = None) -> None:
    """Suspend or resume claiming (persisted): the whole service's switch, or with a tenant
    that tenant's own (the operator's suspension of a tenant is ``tenants.set_active``);
    resuming wakes the dispatchers."""
    if tenant is None:
        store.settings.set_active(conn, active)
    else:
        store.tenants.set_switch(conn, tenant, "dispatching", active, time.time())
    if active:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)


@dataclass(frozen=True)
class Cleanup:
    removed: int
    note: str | None = None  # why nothing was tried, when nothing was


def cleanup(
    conn, config: Config, now: float, older_than: object = None, tenant: str | None = None
) -> Cleanup:
    """Purge messages finished more than ``older_than`` seconds ago (default: the retention),
    of one tenant or (None) of all.

    With delivery reports configured (for its tenant) a message counts as finished once it
    was reported; without them, once it was sent or failed.  A retention of 0 means "keep
    forever": without an explicit age nothing is removed.
    """
    if older_than is None:
        older_than = config.delivery_report_retention_seconds
        if older_than == 0:
            return Cleanup(
                0,
                "delivery_report_retention_seconds is 0 (keep forever), so nothing was "
                "removed; give an age to remove older reported messages",
            )
    if isinstance(older_than, bool) or not isinstance(older_than, int):
        raise Refused("'older_than_seconds' must be a non-negative integer.", Refusal.INVALID)
    if not 0 <= older_than <= MAX_SECONDS:
        raise Refused(f"'older_than_seconds' must be between 0 and {MAX_SECONDS}.", Refusal.INVALID)
    cutoff = now - min(older_than, now)
    silent = store.tenants.without_upstream(conn, config.reports_enabled)
    silent = [t for t in silent if tenant in (None, t)]
    return Cleanup(store.reports.purge_finished(conn, cutoff, silent, tenant=tenant))


def save_account(conn, config: Config, tenant: str, account: Account, now: float) -> dict:
    """Create or replace an account (password sealed); the stored account, no password."""
    row = account.model_dump()
    row["password"] = crypto.seal(account.password, config.secret_key)
    store.accounts.upsert(conn, tenant, row, int(now))
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return store.accounts.get(conn, tenant, account.id)


def delete_account(
    conn, tenant: str, account_id: str, purge: bool, now: float
) -> store.accounts.Deletion:
    """Delete an account (with ``purge`` its unsent messages no dispatcher holds right now).

    Messages whose delivery report is not out yet outlive the account (see
    ``store.accounts``), so the client still hears of every one of them.
    """
    done = store.accounts.delete(conn, tenant, account_id, purge, now)
    if done.deleted:
        return done
    if done.found:
        raise Refused(
            f"Account {account_id!r} has {done.unsent} unsent messages; delete them first, or "
            "purge them with the account (?purge=true, or asyncmail accounts delete --purge).",
            Refusal.CONFLICT,
        )
    raise Refused(
        f"No account {account_id!r}; GET /accounts (asyncmail accounts list) lists them.",
        Refusal.NOT_FOUND,
    )


# -- the suppression list (docs/bounces.md) ----------------------------------------------------
MAX_SUPPRESSIONS_PAGE = 1000


def suppressions(
    conn, tenant: str, limit: int = 100, cursor: str = ""
) -> tuple[list[dict], str | None]:
    """A page of the suppression list in address order, and the next page's cursor."""
    if not 1 <= limit <= MAX_SUPPRESSIONS_PAGE:
        raise Refused(
            f"'limit' must be an integer between 1 and {MAX_SUPPRESSIONS_PAGE}.", Refusal.INVALID
        )
    return store.suppressions.page(conn, tenant, limit, cursor)


def suppress(conn, tenant: str, address: object, reason: object, now: float) -> dict:
    """Put an address on the suppression list by hand; the stored entry."""
    if not isinstance(address, str):
        raise Refused("'address' must be an email address string.", Refusal.INVALID)
    try:
        [(_, checked)] = parse_address_list(address.strip())
    except ValueError:
        message = f"'address': {address!r} is not one email address."
        raise Refused(message, Refusal.INVALID) from None
    if reason not in store.suppressions.REASONS:
        raise Refused(
            f"'reason' must be one of {', '.join(store.suppressions.REASONS)}.", Refusal.INVALID
        )
    return store.suppressions.add(conn, tenant, checked, reason, None, None, now)


def unsuppress(conn, tenant: str, address: str) -> None:
    """Take an address off the suppression list: it is sent to again."""
    if not store.suppressions.remove(conn, tenant, address.strip()):
        raise Refused(
            f"{address!r} is not on the suppression list; GET /suppressions "
            "(asyncmail suppressions list) shows it.",
            Refusal.NOT_FOUND,
        )
