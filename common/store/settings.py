"""Persisted switches and values: the scheduler's ``active`` flag, the time of the last
``run-now``, the status page's session key."""

from __future__ import annotations

from common.store.db import write

RUN_NOW_KEY = "run_now_at"


def get(conn, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return default if row is None else row["value"]


def put(conn, key: str, value: str) -> None:
    with write(conn):
        conn.execute(
            "INSERT INTO settings(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def is_active(conn, configured: bool) -> bool:
    """The persisted scheduler switch, or the configured start value until the API sets it."""
    value = get(conn, "active")
    return configured if value is None else value == "1"


def set_active(conn, active: bool) -> None:
    put(conn, "active", "1" if active else "0")


def record_run_now(conn, now: float) -> None:
    """Remember that run-now was asked for at ``now`` (test_mode's dispatchers and reporter
    act on a newer value than the one they saw last)."""
    put(conn, RUN_NOW_KEY, repr(now))


def run_now_at(conn) -> float:
    """The time of the latest ``run-now`` command (0 when never called or unreadable)."""
    value = get(conn, RUN_NOW_KEY)
    try:
        return float(value) if value else 0.0
    except ValueError:  # not written by run-now: ignore it rather than stop anything
        return 0.0


def get_or_create(conn, key: str, value: str) -> str:
    """The stored value of ``key``; ``value`` is stored first when there is none (first wins)."""
    stored = get(conn, key)
    if stored is None:
        with write(conn):
            conn.execute("INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", (key, value))
        stored = get(conn, key)
    return stored
