"""Bounce-side SQL: find the message a notification is about, record what it said (with the
suppressions it causes) in one transaction, and the late ``bounced`` reports it owes.

The bouncer records a mail of the bounce mailbox here before it moves the mail to another
folder, keyed by the SHA-256 of its bytes: a connection lost between the two leaves the mail
in place, and the next pass finds it recorded and only moves it.

Notifications are matched to messages across tenants (a VERP token or a Message-ID names
one message); what they record belongs to that message's tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.store import suppressions
from common.store.db import write

_MESSAGE = "SELECT tenant_id, id, account_id, payload, sent_ts FROM messages"


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
    tenant: str | None,
) -> bool:
    """Record a handled mail, its events and suppressions (in the tenant of the message they
    are about; None: an unmatched mail) at once; False if it was known."""
    with write(conn):
        conn.execute(
            "INSERT INTO bounce_mails(key, result, shape, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO NOTHING",
            (key, result, shape, now),
        )
        if not conn.changes():
            return False
        conn.executemany(
            "INSERT INTO bounces(tenant_id, message_id, recipient, kind, action, status, "
            "diagnostic, bounced_ts, mail_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(tenant, e.message_id, e.recipient, e.kind, e.action, e.status, e.diagnostic,
              now, key) for e in events],
        )  # fmt: skip
        for s in suppress:
            suppressions.add_in(conn, tenant, s.address, s.reason, s.status, s.diagnostic, now)
    return True


def forget_mails(conn, before: float) -> int:
    """Forget handled mails recorded before ``before`` (long moved out of the inbox)."""
    with write(conn):
        conn.execute("DELETE FROM bounce_mails WHERE ts < ?", (before,))
        return conn.changes()


# A message row stays while a bounce of it waits for its late report (the purge and an
# account's deletion remove reported rows only when nothing more is owed about them).
NO_BOUNCE_OWED = (
    "NOT EXISTS (SELECT 1 FROM bounces AS ob WHERE ob.tenant_id = messages.tenant_id "
    "AND ob.message_id = messages.id AND ob.reported_ts IS NULL AND ob.action = 'failed')"
)

# A bounce is reported after its message's own report, never before: an upstream reads
# the items of one id in order (docs/reporting.md).
_UNREPORTED = """
SELECT b.id AS bounce_id, b.recipient, b.kind, b.status AS bounce_status, b.diagnostic,
       b.bounced_ts, m.id, m.account_id, m.priority, m.sent_ts, m.error_ts, m.error,
       m.deferred_ts, m.attempts, m.smtp_code, m.refused, m.possible_duplicate
FROM bounces AS b INDEXED BY bounces_unreported
JOIN messages AS m ON m.tenant_id = b.tenant_id AND m.id = b.message_id
WHERE b.tenant_id = ? AND b.reported_ts IS NULL AND b.action = 'failed'
  AND m.reported_ts IS NOT NULL
ORDER BY b.id LIMIT ?
"""


def fetch_unreported(conn, tenant: str, limit: int) -> list[dict]:
    """The tenant's failed-delivery notifications owed to its upstream, oldest first."""
    return conn.execute(_UNREPORTED, (tenant, limit)).fetchall() if limit > 0 else []


def mark_reported(conn, rows: list[dict], reported_ts: int) -> None:
    """Mark exactly these notifications (as fetched) reported."""
    with write(conn):
        conn.executemany(
            "UPDATE bounces SET reported_ts = ? WHERE id = ?",
            [(reported_ts, row["bounce_id"]) for row in rows],
        )


def of_message(conn, tenant: str, message_id: str) -> list[dict]:
    """Every notification recorded for a message, oldest first."""
    rows = conn.execute(
        "SELECT recipient, kind, action, status, diagnostic, bounced_ts, reported_ts "
        "FROM bounces WHERE tenant_id = ? AND message_id = ? ORDER BY id",
        (tenant, message_id),
    )
    return [{**row, "bounced_ts": int(row["bounced_ts"])} for row in rows]


def recent(conn, since: float, limit: int, tenant: str | None) -> list[dict]:
    """The latest notifications recorded since ``since`` (of the tenant; None: of all),
    newest first (the status page)."""
    return conn.execute(
        "SELECT b.tenant_id, b.message_id, m.account_id, b.recipient, b.kind, b.action, "
        "b.status, b.diagnostic, b.bounced_ts FROM bounces AS b JOIN messages AS m "
        "ON m.tenant_id = b.tenant_id AND m.id = b.message_id "
        "WHERE b.bounced_ts >= :since AND (:tenant IS NULL OR b.tenant_id = :tenant) "
        "ORDER BY b.id DESC LIMIT :limit",
        {"since": since, "limit": limit, "tenant": tenant},
    ).fetchall()


def kinds_since(conn, since: float, tenant: str | None) -> dict[str, int]:
    """Notifications recorded since ``since`` (of the tenant; None: of all), per kind."""
    found = {"hard": 0, "soft": 0}
    for row in conn.execute(
        "SELECT kind, count(*) AS n FROM bounces WHERE bounced_ts >= :since "
        "AND (:tenant IS NULL OR tenant_id = :tenant) GROUP BY kind",
        {"since": since, "tenant": tenant},
    ):
        found[row["kind"]] = row["n"]
    return found
