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


def record_run_now(conn, now: float, tenant: str | None = None) -> None:
    """Remember that run-now was asked for at ``now``, by one tenant or (None) for the whole
    service: test_mode's dispatchers and reporter act on a newer value than they last saw."""
    put(conn, RUN_NOW_KEY if tenant is None else f"{RUN_NOW_KEY}:{tenant}", repr(now))


def run_now_times(conn) -> dict[str | None, float]:
    """When run-now was last asked for: {tenant (None: the whole service): epoch seconds}."""
    rows = conn.execute(
        "SELECT key, value FROM settings WHERE key = ? OR key LIKE ?",
        (RUN_NOW_KEY, RUN_NOW_KEY + ":%"),
    )
    return {
        (None if r["key"] == RUN_NOW_KEY else r["key"].split(":", 1)[1]): _seconds(r["value"])
        for r in rows
    }


def run_now_at(conn, tenant: str | None = None) -> float:
    """The latest run-now that concerns ``tenant`` (its own or the whole service's; None:
    the whole service's only); 0 when never called."""
    times = run_now_times(conn)
    return max(times.get(None, 0.0), times.get(tenant, 0.0) if tenant is not None else 0.0)


def _seconds(value: str | None) -> float:
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
