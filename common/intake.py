"""Accepting a batch of messages: validate each item, store the good ones, wake dispatchers.

Used by the API's add-messages and by ``asyncmail send``, so both reject the same things
with the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import store, wakeup
from common.config import Config
from common.models import validate_message


@dataclass
class BatchResult:
    queued: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def _reject(result: BatchResult, item, reason: str) -> None:
    message_id = item.get("id") if isinstance(item, dict) else None
    result.rejected.append(
        {"id": message_id if isinstance(message_id, str) else None, "reason": reason}
    )


def accept_batch(
    conn, config: Config, items: list, now: float, default_priority: int | None = None
) -> BatchResult:
    """Validate every item on its own, store the valid ones in one transaction."""
    result = BatchResult()
    priority_default = config.default_priority if default_priority is None else default_priority
    known_accounts = store.account_ids(conn)
    seen: set[str] = set()
    batch: list[store.NewMessage] = []
    for item in items:
        model, payload, reason = validate_message(item)
        if reason is None and model.id in seen:
            reason = "duplicate id in this batch"
        if reason is None and model.account_id is None and not config.has_default_account:
            reason = "no account_id given and no default [smtp] account is configured"
        if (
            reason is None
            and model.account_id is not None
            and model.account_id not in known_accounts
        ):
            reason = f"unknown account_id {model.account_id!r}"
        if reason is not None:
            _reject(result, item, reason)
            continue
        seen.add(model.id)
        batch.append(
            store.NewMessage(
                id=model.id,
                account_id=model.account_id,
                priority=model.resolved_priority(priority_default),
                payload=payload,
                deferred_ts=None if model.deferred_ts is None else int(model.deferred_ts),
            )
        )
    if batch:
        for message_id, reason in store.enqueue(conn, batch, now).items():
            if reason is None:
                result.queued.append(message_id)
            else:
                result.rejected.append({"id": message_id, "reason": reason})
    if result.queued:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return result
