"""The HTTP API's own shapes: request bodies, query arguments and answers.

A message, an attachment and an account are in ``common.models``, because the CLI validates
them too; what only the API reads or answers is here, and ``web.openapi`` publishes both.
Routes build their answers as plain dicts (fast: nothing is validated twice) and these models
describe them: an answer model forbids unknown keys, and tests/test_api_openapi.py checks
real answers of every route against the published schemas, so a key a route adds without
adding it here fails a test.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model

from common.enums import Outcome, Priority, Status
from common.models import MAX_BATCH, Message, PriorityValue, omittable
from common.operations import MAX_SECONDS, STALE_AFTER
from web.messages import MAX_CURSOR, MAX_PAGE, PAGE_BYTES, PAGE_SIZE

# -- requests ----------------------------------------------------------------------------------


class AddMessagesRequest(BaseModel):
    """Messages to queue; each is validated on its own."""

    messages: list[Message] = Field(
        max_length=MAX_BATCH,
        description="An invalid item is listed in 'rejected' and the valid ones are queued.",
    )
    default_priority: PriorityValue | None = Field(
        None, description="For messages without a priority; default: [delivery] default_priority."
    )


class DeleteMessagesRequest(BaseModel):
    """Messages to delete, by id."""

    ids: list[StrictStr]


class CleanupRequest(BaseModel):
    """How old a delivery report must be for its message to be purged."""

    older_than_seconds: StrictInt | None = Field(
        None, ge=0, le=MAX_SECONDS, description="Default: delivery_report_retention_seconds."
    )


class RunNowRequest(BaseModel):
    """What run-now does besides waking every process."""

    flush: StrictBool = Field(
        False,
        description="First make every message waiting for a retry ready now (attempts kept).",
    )


class RetryRequest(BaseModel):
    """Which messages to requeue: 'ids', or 'account_id' and/or 'status'."""

    ids: list[StrictStr] | None = Field(None, description="These messages.")
    account_id: StrictStr | None = Field(None, description="The messages of this account.")
    status: Literal["error", "deferred"] | None = Field(
        None,
        description="Only errored messages, or only those waiting for a retry; default: both. "
        "A message deferred by its own deferred_ts (never attempted) is never requeued.",
    )
    reset_attempts: StrictBool = Field(
        False, description="true: a full set of retries again; false: the attempt counts stay."
    )


class MessagesQuery(BaseModel):
    """GET /messages filters and paging."""

    active_only: bool = Field(False, description="Only unsent messages (true, 1, yes or on).")
    status: Status = omittable("Only messages with this status.")
    account_id: str = omittable("Only this account's messages.")
    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE, description="Messages per page.")
    cursor: int = Field(0, ge=0, le=MAX_CURSOR, description="next_cursor of the last page.")
    include: Literal["payload"] = omittable(
        f"Also return each message as sent; a page then ends at {PAGE_BYTES} payload bytes."
    )


class SuppressionRequest(BaseModel):
    """An address to stop sending to."""

    address: StrictStr = Field(description="An email address; compared case-insensitively.")
    reason: Literal["manual", "complaint", "hard_bounce"] = Field(
        "manual", description="Why: your own decision, a spam complaint, or a hard bounce."
    )


class SuppressionsQuery(BaseModel):
    """GET /suppressions paging."""

    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE, description="Entries per page.")
    cursor: str = omittable("next_cursor of the last page (entries are in address order).")


class DeleteAccountQuery(BaseModel):
    """DELETE /account options."""

    purge: bool = Field(False, description="Also delete its unsent messages (true, 1, yes or on).")


class DeleteTenantQuery(BaseModel):
    """DELETE /tenants options."""

    purge: bool = Field(
        False,
        description="Also while it has unsent messages or unreported outcomes: its mail and "
        "reports stop, and everything of it is removed (true, 1, yes or on).",
    )


# -- answers -----------------------------------------------------------------------------------


class Shape(BaseModel):
    """An answer's exact keys: a key the model does not name is an error."""

    model_config = ConfigDict(extra="forbid")


class Answer(Shape):
    ok: Literal[True]


class Error(Shape):
    """A failure; 'error' says what to change."""

    ok: Literal[False]
    error: str = Field(description="A sentence a person can act on.")


class Rejected(Shape):
    """A message that was not queued, and why."""

    id: str | None = Field(description="null when the item had no string id.")
    reason: str = Field(examples=["in flight"])


class AddMessagesRefused(Error):
    """No message was queued: every one was rejected."""

    queued: Literal[0]
    rejected: list[Rejected]


class Health(Shape):
    """The database answers."""

    ok: Literal[True]
    status: Literal["ok"]


class HealthDown(Shape):
    """The database does not answer."""

    ok: Literal[False]
    status: Literal["unavailable"]
    error: str


class Heartbeat(Shape):
    """The last sign of life of a dispatcher or the reporter."""

    process: str
    kind: Literal["dispatcher", "reporter", "bouncer"]
    pid: int
    ts: int = Field(description="Epoch seconds.")
    age_seconds: float
    stale: bool = Field(description=f"Silent for more than {STALE_AFTER:.0f} s: stuck or gone.")


class Circuit(Shape):
    """An account whose SMTP server failed to connect; its messages wait while it is open."""

    tenant_id: str = Field(description="The tenant of the account.")
    account_id: str | None = Field(description="null: the [smtp] default account.")
    open: bool = Field(description="true: no message of the account is tried before open_until.")
    open_until: int = Field(description="Epoch seconds: the next probe of the server.")
    failures: int = Field(description="Connection failures in a row.")
    since: int = Field(description="Epoch seconds: the first of them.")
    reason: str | None = Field(description="The last failure.")


StatusCounts = create_model(
    "StatusCounts",
    __base__=Shape,
    __doc__="How many messages have each status.",
    **{status.value: (int, ...) for status in Status},
)


class Replication(Shape):
    """Continuous replication of the database by Litestream ([replication])."""

    enabled: bool = Field(description="false when [replication] replica_url is unset.")
    replica: str | None = Field(description="The replica's address, without credentials.")
    up: bool = Field(description="Litestream answers and replicates the database.")
    lag_seconds: float | None = Field(
        description="At most this many seconds of transactions are not on the replica yet; "
        "null while unknown."
    )
    last_sync_ts: int | None = Field(description="Epoch seconds of the last successful sync.")
    problem: str | None = Field(description="Why up is false or the lag is unknown.")


PendingByPriority = dict[Literal["0", "1", "2", "3"], int]


class TenantStatus(Shape):
    """One tenant's switches, queue and reports (the admin's /status)."""

    id: str
    name: str
    active: bool = Field(description="The operator's switch: false while suspended.")
    dispatching: bool = Field(description="The tenant's own switch (its /commands/suspend).")
    counts: StatusCounts
    pending_by_priority: PendingByPriority
    oldest_ready_age_seconds: float
    unreported: int = Field(description="Outcomes whose delivery report is not acknowledged yet.")


class ServiceStatus(Answer):
    """The scheduler switch, message counts and process heartbeats: of the caller's tenant, or
    of the whole service with a breakdown per tenant (the admin naming no tenant)."""

    active: bool = Field(description="false while suspended (for a tenant: by anyone).")
    test_mode: bool
    counts: StatusCounts
    pending_by_priority: PendingByPriority = Field(description="Unsent messages per priority.")
    oldest_ready_age_seconds: float = Field(description="0 when no message is ready.")
    processes: list[Heartbeat]
    replication: Replication = omittable("The whole service's view only.")
    circuits: list[Circuit] = Field(
        description="Accounts whose server failed to connect lately (closed again once a "
        "probe gets through)."
    )
    tenant: str = omittable("The tenant this status is about (absent: the whole service).")
    tenants: list[TenantStatus] = omittable("The whole service's view: each tenant's own.")


class AddMessagesAnswer(Answer):
    """At least one message was queued (or none was sent)."""

    queued: int
    rejected: list[Rejected]


class DeleteMessagesAnswer(Answer):
    """Deleted what no dispatcher holds."""

    removed: int
    not_found: list[str]
    in_flight: list[str] = Field(description="Held by a dispatcher right now; not deleted.")


class CleanupAnswer(Answer):
    """How many reported messages were purged."""

    removed: int
    note: str = omittable("Why nothing was tried, when nothing was.")


class RunNowAnswer(Answer):
    """How many processes were woken."""

    woken: int
    flushed: int = omittable("With flush: messages made ready from a retry wait.")
    probing: int = omittable(
        "With flush: accounts whose open circuit (a server that failed to connect) is probed "
        "at once instead of at the end of its backoff."
    )


class RetryAnswer(Answer):
    """How many messages were requeued, and what became of their attempt counts."""

    requeued: int
    attempts: Literal["reset", "kept"]
    not_found: list[str] = omittable("With ids: the ids that are not stored.")
    not_retryable: list[str] = omittable(
        "With ids: stored but not requeued (sent, queued, in flight, or deferred by the client)."
    )


class ActiveAnswer(Answer):
    """The scheduler switch as it is now."""

    active: bool


class StoredAccount(Shape):
    """An account as stored; the password is never returned."""

    id: str
    host: str
    port: int
    user: str | None
    use_tls: bool | None
    starttls: bool
    ttl: int
    timeout: float
    limit_per_second: int | None
    limit_per_minute: int | None
    limit_per_hour: int | None
    limit_per_day: int | None
    limit_behavior: Literal["defer", "reject"]
    batch_size: int | None
    max_recipients_per_transaction: int
    created_at: int = Field(description="Epoch seconds.")
    updated_at: int = Field(description="Epoch seconds.")


class AccountAnswer(Answer):
    """The account as saved."""

    account: StoredAccount


class AccountsAnswer(Answer):
    """Every account."""

    accounts: list[StoredAccount]


class UsageWindow(Shape):
    """Sends started in one rate-limit window, against the account's limit for it."""

    window: Literal["per_second", "per_minute", "per_hour", "per_day"]
    seconds: int
    limit: int | None = Field(description="null: no limit for this window.")
    used: int = Field(description="Sends started in the last 'seconds' (the ledger's count).")
    remaining: int | None = Field(description="null without a limit.")
    free_at: int | None = Field(description="When the window is full: epoch of the next free slot.")


class UsageAnswer(Answer):
    """An account's usage of each rate-limit window."""

    account_id: str
    limit_behavior: Literal["defer", "reject"]
    windows: list[UsageWindow]


class DeleteAccountAnswer(Answer):
    """The account is gone."""

    removed: str = Field(description="The account id.")
    purged_messages: int = Field(description="Unsent messages deleted with the account.")
    in_flight: list[str] = Field(
        description="Unsent messages a dispatcher was sending: not deleted; if that attempt "
        "does not end them, they fail with 'account deleted' (and are reported)."
    )
    awaiting_report: int = Field(
        description="Sent or failed messages whose delivery report is not out yet: kept "
        "until it is, and reported with this account id."
    )


class Attempt(Shape):
    """One delivery attempt."""

    ts: int = Field(description="Epoch seconds.")
    outcome: Outcome
    smtp_code: int | None
    detail: str | None
    duration: float | None = Field(description="Seconds.")
    process: str | None


class MessageRecord(Shape):
    """A stored message: its state, its delivery so far, and the payload when asked for."""

    id: str
    account_id: str | None
    priority: Priority
    status: Status
    message: Message = omittable("The message exactly as it was sent (include=payload).")
    created_at: int = Field(description="Epoch seconds, like every *_ts and *_at field.")
    updated_at: int
    deferred_ts: int | None
    sent_ts: int | None
    error_ts: int | None
    error: str | None
    reported_ts: int | None
    lease_owner: str | None
    lease_expires: int | None
    attempts: int = Field(description="Delivery attempts so far.")
    smtp_code: int | None
    refused: dict[str, tuple[int | None, str]] | None = Field(
        description="Refused recipients: address to [SMTP code, reply]; a suppressed "
        'recipient (never sent to) is [null, "suppressed"].'
    )
    possible_duplicate: bool = Field(
        description="A dispatcher died mid-send, so the message may have been sent twice."
    )
    message_id_header: str = Field(
        description="The Message-ID header every attempt carries: the client's message_id, "
        "else <random@sender's domain> chosen at enqueue."
    )


class MessagesPage(Answer):
    """One page of messages in storage order."""

    messages: list[MessageRecord]
    next_cursor: int | None = Field(description="Pass as cursor for the next page; null: last.")


class Bounce(Shape):
    """What a delivery status notification said about one recipient (docs/bounces.md)."""

    recipient: str
    kind: Literal["hard", "soft"] = Field(description="hard: 5.x.x; soft: 4.x.x or no status.")
    action: Literal["failed", "delayed"] = Field(
        description="failed: reported upstream as 'bounced'; delayed: still being tried."
    )
    status: str | None = Field(description="The notification's status code, e.g. 5.1.1.")
    diagnostic: str | None = Field(description="The remote server's words, when given.")
    bounced_ts: int = Field(description="When the notification was processed.")
    reported_ts: int | None


class MessageDetail(MessageRecord):
    """One message with its payload, its attempt log and its bounces."""

    ok: Literal[True]
    message: Message = Field(description="The message exactly as it was sent.")
    attempt_log: list[Attempt]
    bounces: list[Bounce]


class Suppression(Shape):
    """An address on the suppression list: the dispatchers do not send to it."""

    address: str = Field(description="Lower-cased.")
    reason: Literal["hard_bounce", "complaint", "manual"]
    status: str | None = Field(
        description="What said so: the SMTP reply and status (550 5.1.1) or the DSN's (5.1.1)."
    )
    diagnostic: str | None
    first_seen: int = Field(description="Epoch seconds.")
    last_seen: int = Field(description="Epoch seconds.")
    count: int = Field(description="How many times it was added or seen failing.")


class SuppressionsPage(Answer):
    """A page of the suppression list, in address order."""

    suppressions: list[Suppression]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


class SuppressionAnswer(Answer):
    """The entry as stored."""

    suppression: Suppression


class SuppressionRemoved(Answer):
    """The address is off the list."""

    removed: str


class Tenant(Shape):
    """A tenant as stored: never its token nor its report secrets."""

    id: str
    name: str
    default: bool = Field(description="The tenant that always exists (its upstream: [client]).")
    active: bool = Field(description="The operator's switch (/tenants/{id}/suspend|activate).")
    dispatching: bool = Field(description="The tenant's own switch (its /commands/suspend).")
    client_sync_url: str | None = Field(description="Its report upstream, credentials hidden.")
    client_sync_user: str | None
    report_format: Literal["delivery_report", "reports"]
    has_password: bool = Field(description="A basic auth password is set (never shown).")
    has_token: bool = Field(description="A bearer token for the upstream is set (never shown).")
    signed: bool = Field(description="Reports are signed: a signing key is set (never shown).")
    limit_per_minute: int | None = Field(description="Across all its accounts; null: none.")
    limit_per_hour: int | None
    limit_per_day: int | None
    limit_behavior: Literal["defer", "reject"]
    created_at: int = Field(description="Epoch seconds.")
    updated_at: int = Field(description="Epoch seconds.")


class TenantAnswer(Answer):
    """The tenant as it is now."""

    tenant: Tenant


class TenantToken(Answer):
    """The tenant and its new API token: the only time the token is shown."""

    tenant: Tenant
    token: str = Field(
        description="Its API token (X-API-Token or Authorization: Bearer); keep it, it is not "
        "stored (only its hash) and never shown again.",
        examples=["amt_..."],
    )


class TenantsAnswer(Answer):
    """Every tenant, the default one first."""

    tenants: list[Tenant]


class TenantDeleted(Answer):
    """The tenant is gone, with its accounts, messages and suppressions."""

    removed: str = Field(description="The tenant id.")
    purged_messages: int = Field(description="Messages removed with it.")
    in_flight: list[str] = Field(
        description="Messages a dispatcher was sending: removed once that attempt ends."
    )
