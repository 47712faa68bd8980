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

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from common.enums import Outcome, Priority, Status
from common.models import MAX_BATCH, Message, PriorityValue, omittable
from common.operations import MAX_SECONDS
from web.messages import MAX_CURSOR, MAX_PAGE, PAGE_SIZE

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


class MessagesQuery(BaseModel):
    """GET /messages filters and paging."""

    active_only: bool = Field(False, description="Only unsent messages (true, 1, yes or on).")
    status: Status = omittable("Only messages with this status.")
    account_id: str = omittable("Only this account's messages.")
    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE, description="Messages per page.")
    cursor: int = Field(0, ge=0, le=MAX_CURSOR, description="next_cursor of the last page.")


class DeleteAccountQuery(BaseModel):
    """DELETE /account options."""

    purge: bool = Field(False, description="Also delete its unsent messages (true, 1, yes or on).")


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
    kind: Literal["dispatcher", "reporter"]
    pid: int
    ts: int = Field(description="Epoch seconds.")
    age_seconds: float


class Circuit(Shape):
    """An account whose SMTP server failed to connect; its messages wait while it is open."""

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


class ServiceStatus(Answer):
    """The scheduler switch, message counts and process heartbeats."""

    active: bool = Field(description="false while suspended.")
    test_mode: bool
    counts: StatusCounts
    pending_by_priority: dict[Literal["0", "1", "2", "3"], int] = Field(
        description="Unsent messages per priority."
    )
    oldest_ready_age_seconds: float = Field(description="0 when no message is ready.")
    processes: list[Heartbeat]
    circuits: list[Circuit] = Field(
        description="Accounts whose server failed to connect lately (closed again once a "
        "probe gets through)."
    )


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
    """A stored message: the payload as sent, its state, and its delivery so far."""

    id: str
    account_id: str | None
    priority: Priority
    status: Status
    message: Message = Field(description="The message exactly as it was sent.")
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
    refused: dict[str, tuple[int, str]] | None = Field(
        description="Refused recipients: address to [SMTP code, reply]."
    )
    possible_duplicate: bool = Field(
        description="A dispatcher died mid-send, so the message may have been sent twice."
    )


class MessagesPage(Answer):
    """One page of messages in storage order."""

    messages: list[MessageRecord]
    next_cursor: int | None = Field(description="Pass as cursor for the next page; null: last.")


class MessageDetail(MessageRecord):
    """One message with its attempt log."""

    ok: Literal[True]
    attempt_log: list[Attempt]
