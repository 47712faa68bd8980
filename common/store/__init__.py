"""Storage: the only room that holds SQL.

    db          connections (apsw, WAL, pragmas), write transactions, numbered migrations
    status      a message's status from its columns, in Python and in SQL
    messages    enqueue, delete, list, read and count messages (API and CLI)
    accounts    SMTP accounts (and tombstones of deleted ones)
    circuits    per-account circuit breaker: accounts whose server is down are not claimed
    settings    persisted switches (active, run-now)
    heartbeats  process liveness
    claims      dispatch: claim under a lease, release, record outcomes
    reports     delivery reports owed, marked, purged after retention
    attempts    send starts (rate-limit ledger, usage), sends and failures per minute
    backup      online copies through SQLite's backup API, checked; the swap of a restore
    bounces     delivery status notifications: matching, recording, late reports
    suppressions  the addresses not sent to

Programs call ``store.<module>.<function>(conn, ...)``; none of them writes SQL.
"""

from common.store import (
    accounts,
    attempts,
    backup,
    bounces,
    circuits,
    claims,
    db,
    heartbeats,
    messages,
    reports,
    schema,
    settings,
    status,
    suppressions,
    tenants,
)

__all__ = [
    "accounts",
    "attempts",
    "backup",
    "bounces",
    "circuits",
    "claims",
    "db",
    "heartbeats",
    "messages",
    "reports",
    "schema",
    "settings",
    "status",
    "suppressions",
    "tenants",
]
