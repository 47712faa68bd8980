"""Tenants: the applications that share the service (docs/tenants.md).

Every account and message (and what hangs on them: attempts, bounces, circuits,
suppressions) belongs to one tenant, and every reader and writer of the store names it.
The tenant ``default`` always exists: it holds what was stored before tenants, and what the
admin token does without naming a tenant.

A tenant's API token is stored as its SHA-256 only (``token_hash``); its report secrets in
their sealed form (``common.crypto.seal``).  A tenant purged while dispatchers still held
some of its rows stays as a tombstone (``deleted_at``; no token, no secrets), invisible to
every reader here, until the reporter's purge finds those rows finished (``drop_tombstones``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.enums import DEFAULT_TENANT
from common.store.db import write

DEFAULT = DEFAULT_TENANT  # always exists: what was stored before tenants, the admin's
SECRETS = ("client_sync_password", "client_sync_token", "client_sync_signing_key")
# what may be written through ``create`` and ``update`` (secrets already sealed)
FIELDS = (
    "name",
    "client_sync_url",
    "client_sync_user",
    *SECRETS,
    "report_format",
    "limit_per_minute",
    "limit_per_hour",
    "limit_per_day",
    "limit_behavior",
)
COLUMNS = (
    "id, name, active, dispatching, client_sync_url, client_sync_user, report_format, "
    "limit_per_minute, limit_per_hour, limit_per_day, limit_behavior, created_at, updated_at, "
    "client_sync_token IS NOT NULL AS has_token, "
    "client_sync_password IS NOT NULL AS has_password, "
    "client_sync_signing_key IS NOT NULL AS signed"
)
_LIVE = "deleted_at IS NULL"
_UNSENT = "tenant_id = :tenant AND sent_ts IS NULL AND error_ts IS NULL"
_HELD = f"{_UNSENT} AND coalesce(lease_expires, 0) > :now"


def _out(row: dict | None) -> dict | None:
    if row is None:
        return None
    for flag in ("active", "dispatching", "has_token", "has_password", "signed"):
        row[flag] = bool(row[flag])
    return row


def create(conn, tenant_id: str, fields: dict, token_hash: str, now: float) -> str | None:
    """Create a tenant; None, or why not ("exists", "removing": a tombstone is still there)."""
    values = {name: fields.get(name) for name in FIELDS}
    values["report_format"] = values["report_format"] or "delivery_report"
    values["limit_behavior"] = values["limit_behavior"] or "defer"
    with write(conn):
        row = conn.execute("SELECT deleted_at FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        if row is not None:
            return "exists" if row["deleted_at"] is None else "removing"
        names = ", ".join(FIELDS)
        conn.execute(
            f"INSERT INTO tenants (id, token_hash, created_at, updated_at, {names}) VALUES "
            f"(:id, :hash, :now, :now, {', '.join(':' + n for n in FIELDS)})",
            {**values, "id": tenant_id, "hash": token_hash, "now": int(now)},
        )
    return None


def get(conn, tenant_id: str) -> dict | None:
    """One live tenant (never its token or secrets; ``has_*`` say which secrets are set)."""
    return _out(
        conn.execute(
            f"SELECT {COLUMNS} FROM tenants WHERE id = ? AND {_LIVE}", (tenant_id,)
        ).fetchone()
    )


def list_all(conn) -> list[dict]:
    """Every live tenant, the default one first."""
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM tenants WHERE {_LIVE} ORDER BY id != ?, id", (DEFAULT,)
    )
    return [_out(row) for row in rows]


def exists(conn, tenant_id: str) -> bool:
    """True for a live tenant."""
    row = conn.execute(f"SELECT 1 FROM tenants WHERE id = ? AND {_LIVE}", (tenant_id,))
    return row.fetchone() is not None


def by_token_hash(conn, token_hash: str) -> dict | None:
    """The live tenant whose token hashes to ``token_hash``: {id, token_hash}, or None."""
    return conn.execute(
        f"SELECT id, token_hash FROM tenants WHERE token_hash = ? AND {_LIVE}", (token_hash,)
    ).fetchone()


def token_hash(conn, tenant_id: str) -> str | None:
    """The stored hash of a live tenant's token (None: no tenant, or none set)."""
    row = conn.execute(
        f"SELECT token_hash FROM tenants WHERE id = ? AND {_LIVE}", (tenant_id,)
    ).fetchone()
    return None if row is None else row["token_hash"]


def update(conn, tenant_id: str, changes: dict, now: float) -> bool:
    """Change some of ``FIELDS`` (secrets already sealed); False when there is no such tenant."""
    changes = {k: v for k, v in changes.items() if k in FIELDS}
    sets = "".join(f"{name} = :{name}, " for name in changes)
    with write(conn):
        conn.execute(
            f"UPDATE tenants SET {sets}updated_at = :now WHERE id = :id AND {_LIVE}",
            {**changes, "id": tenant_id, "now": int(now)},
        )
        return conn.changes() > 0


def set_token_hash(conn, tenant_id: str, token_hash: str, now: float) -> bool:
    """Replace the tenant's token (the old one stops working with this commit)."""
    with write(conn):
        conn.execute(
            f"UPDATE tenants SET token_hash = ?, updated_at = ? WHERE id = ? AND {_LIVE}",
            (token_hash, int(now), tenant_id),
        )
        return conn.changes() > 0


def set_switch(conn, tenant_id: str, name: str, on: bool, now: float) -> bool:
    """Set ``active`` (the operator's switch) or ``dispatching`` (the tenant's own)."""
    if name not in {"active", "dispatching"}:
        raise ValueError(name)
    with write(conn):
        conn.execute(
            f"UPDATE tenants SET {name} = ?, updated_at = ? WHERE id = ? AND {_LIVE}",
            (int(on), int(now), tenant_id),
        )
        return conn.changes() > 0


def without_upstream(conn, default_reports: bool) -> list[str]:
    """The live tenants whose outcomes are never reported (no upstream); ``default_reports``:
    the default tenant has one ([client] client_sync_url)."""
    rows = conn.execute(f"SELECT id, client_sync_url FROM tenants WHERE {_LIVE} ORDER BY id")
    return [
        row["id"]
        for row in rows
        if not (default_reports if row["id"] == DEFAULT else row["client_sync_url"])
    ]


def report_targets(conn) -> list[dict]:
    """Every live tenant's report settings, secrets sealed ('default': none, it has [client])."""
    return conn.execute(
        "SELECT id, client_sync_url, client_sync_user, client_sync_password, "
        "client_sync_token, client_sync_signing_key, report_format "
        f"FROM tenants WHERE {_LIVE} ORDER BY id"
    ).fetchall()


@dataclass
class Deletion:
    """What ``delete`` did, or why it did nothing."""

    found: bool
    deleted: bool = False
    unsent: int = 0  # messages not sent nor failed yet
    unreported: int = 0  # outcomes whose delivery report was not acknowledged yet
    purged: int = 0  # messages removed
    in_flight: list[str] = field(default_factory=list)  # held by a dispatcher: finished later


def delete(conn, tenant_id: str, purge: bool, now: float) -> Deletion:
    """Remove a tenant and everything of it; refused while it owes mail or reports, unless
    ``purge``.  Rows a dispatcher holds stay until their attempt ends (``drop_tombstones``)."""
    params = {"tenant": tenant_id, "now": now}
    with write(conn):
        if not exists(conn, tenant_id):
            return Deletion(found=False)
        unsent = _count(conn, f"SELECT count(*) AS n FROM messages WHERE {_UNSENT}", params)
        unreported = _count(
            conn,
            "SELECT count(*) AS n FROM messages WHERE tenant_id = :tenant "
            "AND outcome_at IS NOT NULL AND reported_ts IS NULL",
            params,
        )
        if (unsent or unreported) and not purge:
            return Deletion(True, unsent=unsent, unreported=unreported)
        held = [r["id"] for r in conn.execute(f"SELECT id FROM messages WHERE {_HELD}", params)]
        purged = _remove_rows(conn, params)
        if held:  # a tombstone until the dispatchers are done with them
            conn.execute(
                "UPDATE tenants SET deleted_at = :now, token_hash = NULL, "
                "client_sync_password = NULL, client_sync_token = NULL, "
                "client_sync_signing_key = NULL, updated_at = :now WHERE id = :tenant",
                {"tenant": tenant_id, "now": int(now)},
            )
        else:
            conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
    return Deletion(True, True, unsent, unreported, purged, held)


def _count(conn, sql: str, params: dict) -> int:
    return conn.execute(sql, params).fetchone()["n"]


def _remove_rows(conn, params: dict) -> int:
    """Delete every row of the tenant no dispatcher holds (attempts and bounces cascade)."""
    conn.execute(f"DELETE FROM messages WHERE tenant_id = :tenant AND NOT ({_HELD})", params)
    purged = conn.changes()
    for table in ("suppressions", "circuits"):
        conn.execute(f"DELETE FROM {table} WHERE tenant_id = :tenant", params)
    conn.execute(
        "DELETE FROM accounts WHERE tenant_id = :tenant AND NOT EXISTS (SELECT 1 FROM messages "
        "AS m WHERE m.tenant_id = accounts.tenant_id AND m.account_id = accounts.id)",
        params,
    )
    return purged


def drop_tombstones(conn, now: float) -> int:
    """Finish the removal of purged tenants whose rows dispatchers no longer hold; how many."""
    dropped = 0
    rows = conn.execute("SELECT id FROM tenants WHERE deleted_at IS NOT NULL").fetchall()
    for tenant_id in [row["id"] for row in rows]:
        params = {"tenant": tenant_id, "now": now}
        with write(conn):
            _remove_rows(conn, params)
            conn.execute(
                "DELETE FROM tenants WHERE id = :tenant AND deleted_at IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM messages WHERE tenant_id = :tenant)",
                params,
            )
            dropped += conn.changes()
    return dropped
