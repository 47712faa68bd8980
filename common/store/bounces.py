"""Bounce-side SQL: find the message a notification is about, record what it said (with the
suppressions it causes) in one transaction, and the late ``bounced`` reports it owes.

The bouncer records a mail of the bounce mailbox here before it moves the mail to another
folder, keyed by the SHA-256 of its bytes: a connection lost between the two leaves the mail
in place, and the next pass finds it recorded and only moves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.store import suppressions
from common.store.db import write

_MESSAGE = "SELECT id, account_id, payload, sent_ts FROM messages"


@dataclass(frozen=True)
class Event:
    """What a notification said about one recipient of one message."""

    message_id: str
    recipient: str
    kind: str  # hard, soft
    action: str  # failed, delayed
    status: str | None
    diagnostic: str | None


@dataclass(frozen=True)
class Suppress:
    """An address the notification puts on the suppression list."""

    address: str
    reason: str
    status: str | None
    diagnostic: str | None


def message_by_token(conn, token: str) -> dict | None:
    """The message sent with envelope sender bounce+<token>@verp_domain."""
    return conn.execute(f"{_MESSAGE} WHERE verp_token = ?", (token.lower(),)).fetchone()


def message_by_header(conn, message_id_header: str) -> dict | None:
    """The message that carried this Message-ID (the latest sent, if a client reused it)."""
    return conn.execute(
        f"{_MESSAGE} WHERE message_id_header = ? ORDER BY sent_ts IS NULL, sent_ts DESC LIMIT 1",
        (message_id_header,),
    ).fetchone()


def mail_result(conn, key: str) -> str | None:
    """What became of this mailbox mail if it was handled before (processed, unmatched)."""
    row = conn.execute("SELECT result FROM bounce_mails WHERE key = ?", (key,)).fetchone()
    return None if row is None else row["result"]


def record_mail(
    conn,
    key: str,
    result: str,
    shape: str | None,
    events: list[Event],
    suppress: list[Suppress],
    now: float,
) -> bool:
    """Record a handled mail, its events and suppressions at once; False if it was known."""
    with write(conn):
        conn.execute(
            "INSERT INTO bounce_mails(key, result, shape, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO NOTHING",
            (key, result, shape, now),
        )
        if not conn.changes():
            return False
        conn.executemany(
            "INSERT INTO bounces(message_id, recipient, kind, action, status, diagnostic, "
            "bounced_ts, mail_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.message_id, e.recipient, e.kind, e.action, e.status, e.diagnostic, now, key)
             for e in events],
        )  # fmt: skip
        for s in suppress:
            suppressions.add_in(conn, s.address, s.reason, s.status, s.diagnostic, now)
    return True


def forget_mails(conn, before: float) -> int:
    """Forget handled mails recorded before ``before`` (long moved out of the inbox)."""
    with write(conn):
        conn.execute("DELETE FROM bounce_mails WHERE ts < ?", (before,))
        return conn.changes()


# A bounce is reported after its message's own report, never before: an upstream reads
# the items of one id in order (docs/reporting.md).
_UNREPORTED = """
SELECT b.id AS bounce_id, b.recipient, b.kind, b.status AS bounce_status, b.diagnostic,
       b.bounced_ts, m.id, m.account_id, m.priority, m.sent_ts, m.error_ts, m.error,
       m.deferred_ts, m.attempts, m.smtp_code, m.refused, m.possible_duplicate
FROM bounces AS b INDEXED BY bounces_unreported JOIN messages AS m ON m.id = b.message_id
WHERE b.reported_ts IS NULL AND b.action = 'failed' AND m.reported_ts IS NOT NULL
ORDER BY b.id LIMIT ?
"""


def fetch_unreported(conn, limit: int) -> list[dict]:
    """Failed-delivery notifications owed to the upstream, oldest first, at most ``limit``."""
    return conn.execute(_UNREPORTED, (limit,)).fetchall() if limit > 0 else []


def mark_reported(conn, rows: list[dict], reported_ts: int) -> None:
    """Mark exactly these notifications (as fetched) reported."""
    with write(conn):
        conn.executemany(
            "UPDATE bounces SET reported_ts = ? WHERE id = ?",
            [(reported_ts, row["bounce_id"]) for row in rows],
        )


def of_message(conn, message_id: str) -> list[dict]:
    """Every notification recorded for a message, oldest first."""
    rows = conn.execute(
        "SELECT recipient, kind, action, status, diagnostic, bounced_ts, reported_ts "
        "FROM bounces WHERE message_id = ? ORDER BY id",
        (message_id,),
    )
    return [{**row, "bounced_ts": int(row["bounced_ts"])} for row in rows]


def recent(conn, since: float, limit: int) -> list[dict]:
    """The latest notifications recorded since ``since``, newest first (the status page)."""
    return conn.execute(
        "SELECT b.message_id, m.account_id, b.recipient, b.kind, b.action, b.status, "
        "b.diagnostic, b.bounced_ts FROM bounces AS b JOIN messages AS m ON m.id = b.message_id "
        "WHERE b.bounced_ts >= ? ORDER BY b.id DESC LIMIT ?",
        (since, limit),
    ).fetchall()


def kinds_since(conn, since: float) -> dict[str, int]:
    """Notifications recorded since ``since``, per kind (hard, soft)."""
    found = {"hard": 0, "soft": 0}
    for row in conn.execute(
        "SELECT kind, count(*) AS n FROM bounces WHERE bounced_ts >= ? GROUP BY kind", (since,)
    ):
        found[row["kind"]] = row["n"]
    return found
