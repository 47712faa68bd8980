"""The queue as tests write and read it: enqueue through intake, rows, attempts, outcomes."""

from __future__ import annotations

import json

from common import intake, store
from common.enums import DEFAULT_TENANT
from tests.support.factories import T0


def enqueue(conn, config, *items: dict, now: float = T0, tenant: str = DEFAULT_TENANT) -> list[str]:
    """Accept items as the API does (wake-up datagram included); any rejection fails the test.

    Real processes read the real clock: pass ``now=time.time()`` when they are to send.
    """
    result = intake.accept_batch(conn, config, tenant, list(items), now)
    assert not result.rejected, result.rejected
    return result.queued


def row(conn, message_id: str, tenant: str = DEFAULT_TENANT) -> dict:
    """The message's row, every column."""
    return conn.execute(
        "SELECT * FROM messages WHERE tenant_id = ? AND id = ?", (tenant, message_id)
    ).fetchone()


def attempts(conn, message_id: str | None = None, *, outcome: str | None = None) -> list[dict]:
    """Attempt rows in the order they were written, of one message and/or one outcome."""
    rows = conn.execute("SELECT * FROM attempts ORDER BY id").fetchall()
    return [
        r for r in rows if message_id in (None, r["message_id"]) and outcome in (None, r["outcome"])
    ]


def record_outcome(
    conn,
    message_id: str,
    at: float,
    *,
    error=None,
    smtp_code=250,
    refused=None,
    duplicate=False,
    attempts=1,
    tenant=DEFAULT_TENANT,
) -> None:
    """Enqueue a message, then give it a terminal outcome as a dispatcher would."""
    new = store.messages.NewMessage(
        message_id, None, 2, {"id": message_id}, None, f"<{message_id}@x.example>"
    )
    store.messages.enqueue(conn, tenant, [new], at - 1)
    with store.db.write(conn):
        conn.execute(
            "UPDATE messages SET sent_ts = :sent, error_ts = :failed, error = :error, "
            "attempts = :attempts, smtp_code = :code, refused = :refused, "
            "possible_duplicate = :dup, outcome_at = :at WHERE tenant_id = :tenant AND id = :id",
            {
                "sent": None if error else int(at),
                "failed": int(at) if error else None,
                "error": error,
                "attempts": attempts,
                "code": smtp_code,
                "refused": json.dumps(refused) if refused else None,
                "dup": int(duplicate),
                "at": at,
                "id": message_id,
                "tenant": tenant,
            },
        )
