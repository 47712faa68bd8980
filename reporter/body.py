"""The proxy_sync request body: one item per terminal outcome, the reference's fields first,
and one ``bounced`` item per failed delivery a notification reported later (docs/bounces.md).

``{"delivery_report": [item, ...]}`` as compact UTF-8 JSON.  The reference's seven fields
come first and keep their meaning; ours follow, so an upstream written for the reference
reads what it knows and ignores the rest.  ``[client] report_format = reports`` puts the same
items under ``"reports"``, the key the reference's example client reads.  The items of a
tenant other than the default one carry its ``tenant_id`` too (the default tenant's items
are exactly as before tenants).
"""

from __future__ import annotations

import json

from common.enums import DEFAULT_TENANT
from common.store.status import status_of

REFERENCE_FIELDS = ("id", "account_id", "priority", "sent_ts", "error_ts", "error", "deferred_ts")


def _epoch(value) -> int | None:
    return None if value is None else int(value)


def _refused(text: str | None):
    """The stored JSON of refused recipients; unparsable text is passed on, never a blocker."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _item(row: dict, status: str) -> dict:
    item = {
        "id": row["id"],
        "account_id": row["account_id"],
        "priority": row["priority"],
        "sent_ts": _epoch(row["sent_ts"]),
        "error_ts": _epoch(row["error_ts"]),
        "error": row["error"],
        "deferred_ts": _epoch(row["deferred_ts"]),
        "status": status,
        "attempts": row["attempts"],
        "smtp_code": row["smtp_code"],
        "refused": _refused(row["refused"]),
    }
    if row["possible_duplicate"]:
        item["possible_duplicate"] = True
    return item


def _tagged(item: dict, tenant: str) -> dict:
    if tenant != DEFAULT_TENANT:
        item["tenant_id"] = tenant
    return item


def report_item(row: dict, now: float, tenant: str) -> dict:
    """One ``delivery_report`` item from a row of ``store.reports.fetch_unreported``."""
    return _tagged(_item(row, status_of(row, now).value), tenant)


def bounce_item(row: dict, tenant: str) -> dict:
    """A late ``bounced`` item from a row of ``store.bounces.fetch_unreported``.

    The message's own item was reported before (sent); this one follows it, with what the
    delivery status notification said about one recipient.
    """
    return _tagged(
        _item(row, "bounced")
        | {
            "recipient": row["recipient"],
            "bounce_type": row["kind"],
            "status_code": row["bounce_status"],
            "diagnostic": row["diagnostic"],
            "bounced_ts": _epoch(row["bounced_ts"]),
        },
        tenant,
    )


def encode_report(items: list[dict], key: str = "delivery_report") -> bytes:
    """The request body: ``{key: [...]}`` as compact UTF-8 JSON (key: the report_format)."""
    return json.dumps({key: items}, ensure_ascii=False, separators=(",", ":")).encode()
