"""Accepting a batch of messages: validate each item, store the good ones, wake dispatchers.

Used by the API's add-messages and by ``asyncmail send``, so both reject the same things
with the same reasons.  A batch is enqueued in one tenant: its accounts are the only ones
its messages may name, and the [smtp] default account is the default tenant's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import store, wakeup
from common.addresses import angle_brackets, new_message_id, new_verp_token, sender_domain
from common.config import Config
from common.enums import DEFAULT_TENANT
from common.models import Message, validate_message


@dataclass
class BatchResult:
    queued: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def _reject(result: BatchResult, item, reason: str) -> None:
    message_id = item.get("id") if isinstance(item, dict) else None
    result.rejected.append(
        {"id": message_id if isinstance(message_id, str) else None, "reason": reason}
    )


def _refusal(
    model: Message, seen: set[str], accounts: set[str], config: Config, tenant: str
) -> str | None:
    """Why a valid message still cannot be queued in this batch, or None."""
    if model.id in seen:
        return "duplicate id in this batch"
    if model.account_id is None and tenant != DEFAULT_TENANT:
        return "no account_id given; name one of this tenant's accounts (GET /accounts)"
    if model.account_id is None and not config.has_default_account:
        return "no account_id given and no default [smtp] account is configured"
    if model.account_id is not None and model.account_id not in accounts:
        return f"unknown account_id {model.account_id!r}; create it with POST /account"
    recipients = len(set(model.recipients()))
    if recipients > config.max_recipients_per_message:
        return (
            f"{recipients} recipients (to, cc and bcc); at most "
            f"{config.max_recipients_per_message} are allowed per message "
            "(max_recipients_per_message): split it into several messages"
        )
    for index, attachment in enumerate(model.attachments or []):
        refusal = attachment.s3 and config.s3_refusal(attachment.s3.bucket)
        if refusal:
            return f"field 'attachments.{index}.s3' {refusal}"
    return None


def message_id_header(model: Message, config: Config, now: float) -> str:
    """The Message-ID every attempt of this message carries: the client's, else a new one.

    Chosen once, here, and stored: retries and a possible duplicate send repeat it, so the
    copy is recognisable downstream, and a bounce can be matched to its message.
    """
    if model.message_id:
        return angle_brackets(model.message_id)
    return new_message_id(config.message_id_domain or sender_domain(model.from_), now)


def accept_batch(
    conn,
    config: Config,
    tenant: str,
    items: list,
    now: float,
    default_priority: int | None = None,
) -> BatchResult:
    """Validate every item on its own, store the valid ones (in ``tenant``) in one transaction."""
    result = BatchResult()
    priority_default = config.default_priority if default_priority is None else default_priority
    accounts = store.accounts.ids(conn, tenant)
    seen: set[str] = set()
    batch: list[store.messages.NewMessage] = []
    for item in items:
        model, payload, reason = validate_message(item)
        reason = reason or _refusal(model, seen, accounts, config, tenant)
        if reason is not None:
            _reject(result, item, reason)
            continue
        seen.add(model.id)
        deferred_ts = None if model.deferred_ts is None else int(model.deferred_ts)
        priority = model.resolved_priority(priority_default)
        header = message_id_header(model, config, now)
        token = new_verp_token(now) if config.verp_domain else None
        batch.append(
            store.messages.NewMessage(
                model.id, model.account_id, priority, payload, deferred_ts, header, token
            )
        )
    if batch:
        for message_id, reason in store.messages.enqueue(conn, tenant, batch, now).items():
            if reason is None:
                result.queued.append(message_id)
            else:
                result.rejected.append({"id": message_id, "reason": reason})
    if result.queued:
        wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    return result
