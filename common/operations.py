"""Operator actions, written once: the API's routes and the ``asyncmail`` commands call these.

Each takes the database connection and the configuration, does the whole action (store,
wake-ups) and returns what both callers show.  A refusal raises ``Refused`` with a sentence
a person can act on and a ``kind`` the caller maps to its own answer (HTTP status or exit
code).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common import crypto, store, wakeup
from common.config import Config
from common.models import Account

MAX_SECONDS = 2**63 - 1  # an age larger than any SQLite integer is not a real age


class Refusal(enum.StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"


class Refused(Exception):
    """The action was not done; ``str(exc)`` says why and what to do instead."""

    def __init__(self, message: str, kind: Refusal):
        super().__init__(message)
        self.kind = kind


def status(conn, config: Config, now: float) -> dict:
    """The scheduler switch, message counts and every process's heartbeat."""
    return {
        "active": store.settings.is_active(conn, config.active),
        "test_mode": config.test_mode,
        "counts": store.messages.status_counts(conn, now),
        "pending_by_priority": store.messages.pending_by_priority(conn),
        "oldest_ready_age_seconds": round(store.messages.oldest_ready_age(conn, now), 3),
        "processes": store.heartbeats.list_all(conn, now),
        "circuits": store.circuits.list_all(conn, now),
    }


def run_now(conn, config: Config, now: float) -> int:
    """Record the request and wake every dispatcher and the reporter; how many were woken."""
    store.settings.record_run_now(conn, now)
    woken = wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return woken + wakeup.notify(config.run_dir, wakeup.REPORTER)


def set_active(conn, config: Config, active: bool) -> None:
    """Suspend or resume claiming (persisted); resuming wakes the dispatchers."""
    store.settings.set_active(conn, active)
    if active:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)


@dataclass(frozen=True)
class Cleanup:
    removed: int
    note: str | None = None  # why nothing was tried, when nothing was


def cleanup(conn, config: Config, now: float, older_than: object = None) -> Cleanup:
    """Purge messages reported more than ``older_than`` seconds ago (default: the retention).

    A retention of 0 means "keep forever": without an explicit age nothing is removed.
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
        raise Refused("'older_than_seconds' must be a non-negative integer", Refusal.INVALID)
    if not 0 <= older_than <= MAX_SECONDS:
        raise Refused(f"'older_than_seconds' must be between 0 and {MAX_SECONDS}", Refusal.INVALID)
    return Cleanup(store.reports.purge_reported(conn, now - min(older_than, now)))


def save_account(conn, config: Config, account: Account, now: float) -> dict:
    """Create or replace an account (password sealed); the stored account, no password."""
    row = account.model_dump()
    row["password"] = crypto.seal(account.password, config.secret_key)
    store.accounts.upsert(conn, row, int(now))
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return store.accounts.get(conn, account.id)


def delete_account(conn, account_id: str, purge: bool, now: float) -> store.accounts.Deletion:
    """Delete an account (with ``purge`` its unsent messages no dispatcher holds right now).

    Messages whose delivery report is not out yet outlive the account (see
    ``store.accounts``), so the client still hears of every one of them.
    """
    done = store.accounts.delete(conn, account_id, purge, now)
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
