"""Process heartbeats: each dispatcher and the reporter record that they are alive."""

from __future__ import annotations

from common.store.db import write


def beat(conn, process: str, kind: str, pid: int, now: float) -> None:
    """Record that a process is alive."""
    with write(conn):
        conn.execute(
            "INSERT INTO heartbeats(process, kind, pid, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(process) DO UPDATE SET kind = excluded.kind, pid = excluded.pid, "
            "ts = excluded.ts",
            (process, kind, pid, now),
        )


def list_all(conn, now: float) -> list[dict]:
    rows = conn.execute("SELECT process, kind, pid, ts FROM heartbeats ORDER BY process")
    return [{**r, "ts": int(r["ts"]), "age_seconds": round(now - r["ts"], 3)} for r in rows]


def clear(conn) -> int:
    """Forget every heartbeat; the launcher calls it before supervisord starts the processes."""
    with write(conn):
        conn.execute("DELETE FROM heartbeats")
        return conn.changes()
