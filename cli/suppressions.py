"""``asyncmail suppressions list|add|remove``: a tenant's suppression list (--tenant),
straight in the database."""

from __future__ import annotations

import time

from cli.output import OK, REFUSED, CliError, emit, table, when
from cli.tenants import tenant
from common import operations, store
from common.config import Config

COLUMNS = ["address", "reason", "status", "count", "first seen", "last seen", "diagnostic"]


def cmd_suppressions_list(config: Config, args) -> int:
    """List suppressed addresses in address order (--cursor: from a previous page)."""
    conn = store.db.open_database(config)
    try:
        rows, cursor = operations.suppressions(
            conn, tenant(conn, args), args.limit, args.cursor or ""
        )
    except operations.Refused as exc:
        raise CliError(str(exc).replace("'limit'", "--limit")) from None
    shown = [
        {**row, "first seen": when(row["first_seen"]), "last seen": when(row["last_seen"])}
        for row in rows
    ]
    human = table(shown, COLUMNS) if rows else "no suppressed address"
    if cursor:
        human += f"\nmore: asyncmail suppressions list --cursor {cursor}"
    emit(args, {"ok": True, "suppressions": rows, "next_cursor": cursor}, human)
    return OK


def cmd_suppressions_add(config: Config, args) -> int:
    """Stop sending to an address."""
    conn = store.db.open_database(config)
    try:
        entry = operations.suppress(
            conn, tenant(conn, args), args.address, args.reason, time.time()
        )
    except operations.Refused as exc:
        raise CliError(str(exc).replace("'address': ", "")) from None
    emit(args, {"ok": True, "suppression": entry}, f"suppressed {entry['address']} ({args.reason})")
    return OK


def cmd_suppressions_remove(config: Config, args) -> int:
    """Send to an address again."""
    conn = store.db.open_database(config)
    try:
        operations.unsuppress(conn, tenant(conn, args), args.address)
    except operations.Refused as exc:
        message = str(exc).replace("GET /suppressions (asyncmail suppressions list)", "asyncmail "
                                   "suppressions list")  # fmt: skip
        raise CliError(message, REFUSED) from None
    address = args.address.strip().lower()
    emit(args, {"ok": True, "removed": address}, f"{address} is sent to again")
    return OK
