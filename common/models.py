"""Payload models: what a message and an account may look like, with reasons for rejection.

The API and the CLI validate with these models and ``web.openapi`` publishes their JSON
schemas (the API's own request and answer shapes are in ``web.schemas``).  Every field is
typed, strictly (no bool for a number, no number for a string); a wrong type gets this
module's sentence (``_wrong_type``) and value checks run after the type check.  A check JSON
Schema cannot state (address grammar, base64) is described in the field's schema.

A message is validated on its own: a ``Message`` or a one-sentence reason a person can act
on.  The stored payload is the item exactly as sent; unknown fields are ignored but kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)

from common.addresses import no_line_breaks, parse_address_list
from common.enums import Priority

MAX_ID_LENGTH = 255
MAX_HOST_LENGTH = 255  # a DNS name is at most 253 characters; an IP literal is shorter
MAX_BATCH = 1000  # most messages one add-messages request may carry
MAX_TTL = 86400  # seconds an SMTP connection may be kept: a day is already generous
MAX_TIMEOUT = 600  # seconds one SMTP command may take; longer only hides a dead server
MAX_LIMIT = 10**9  # beyond any real rate or batch; keeps values inside SQLite integers
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: later values cannot be a real send time
MAX_DEPTH = 32  # nesting of objects and lists in one message; ours need 4, clients' extras more
# Published in the JSON schema (ECMA-262 reads $ as the end of the text; Python's $ also
# matches before a final newline, so these are checked after CR and LF are refused, or whole).
# header text: no CR or LF (injection), no other control but tab, no Unicode line separator
ONE_LINE = r"^[^\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]*$"
HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII except ':'
HTTP_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/]+"
MIME_TYPE = r"^[\w.+-]+/[\w.+-]+$"
ACCOUNT_ID = r"^[\w.@+-]+$"
HOST = r"^[^\s/]+$"
PRIORITY_HELP = (
    "0 immediate, 1 high, 2 medium, 3 low; the names in any case and '0'-'3' are accepted."
)
ADDRESSES_HELP = (
    "One address string (commas separate several) or a list of them; "
    "'Name <addr@example.com>' is allowed."
)


def _wrong_type(reason: str) -> WrapValidator:
    """Pydantic checks the type; a value of the wrong type is refused with ``reason``."""

    def check(value: Any, handler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(reason) from None

    return WrapValidator(check)


def _schema(**keywords) -> Any:
    """JSON-schema keywords for a check this module makes in Python (published, not run)."""
    return Field(json_schema_extra=keywords)


def _omit_default(schema: dict) -> None:
    schema.pop("default", None)


def omittable(description: str, **kwargs) -> Any:
    """A field that may be left out but is never null: no ``default: null`` in its schema."""
    return Field(None, description=description, json_schema_extra=_omit_default, **kwargs)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _addresses(value: str | list[str]) -> str | list[str]:
    parse_address_list(value)
    return value


def _recipients(value: str | list[str]) -> str | list[str]:
    if not parse_address_list(value):
        raise ValueError("must name at least one recipient")
    return value


def _one_address(value: str) -> str:
    if len(parse_address_list(value)) != 1:
        raise ValueError("must be exactly one email address")
    return value


def _priority(value: Any, handler) -> Any:
    Priority.parse(value)  # the one parser, and its reason for anything else (a bool, 1.5)
    return handler(value)


def _base64(value: str) -> str:
    try:
        base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    return value


def _matching(text_type: Any, pattern: str, reason: str) -> Any:
    """``text_type`` that must match ``pattern`` (published), refused with ``reason``."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(reason)
        return value

    return Annotated[text_type, AfterValidator(check), _schema(pattern=pattern)]


Line = Annotated[StrictStr, _schema(pattern=ONE_LINE)]  # the types below check it
HeaderText = Annotated[Line, _wrong_type("must be a string"), AfterValidator(no_line_breaks)]
NonBlank = Annotated[HeaderText, AfterValidator(_not_blank), _schema(minLength=1)]
AddressList = Annotated[
    Line | list[Line],
    _wrong_type("must be an address string or a list of address strings"),
    AfterValidator(_addresses),
]
RecipientList = Annotated[
    Annotated[Line, _schema(minLength=1)] | Annotated[list[Line], _schema(minItems=1)],
    _wrong_type("must be an address string or a list of address strings"),
    AfterValidator(_recipients),
]
SingleAddress = Annotated[Line, _wrong_type("must be a string"), AfterValidator(_one_address)]
PriorityValue = Annotated[
    Annotated[StrictInt, Field(ge=0, le=3)] | StrictStr,
    WrapValidator(_priority),
    Field(description=PRIORITY_HELP, examples=[1, "high"]),
]
EpochSeconds = Annotated[
    Annotated[StrictInt, Field(ge=0, le=MAX_EPOCH)]
    | Annotated[StrictFloat, Field(ge=0, le=MAX_EPOCH, allow_inf_nan=False)],
    _wrong_type("must be epoch seconds (a number between 0 and year 9999)"),
]
Limit = Annotated[StrictInt, Field(ge=1, le=MAX_LIMIT)]
HttpUrl = _matching(StrictStr, HTTP_URL, "must be an http:// or https:// URL")
MimeType = _matching(HeaderText, MIME_TYPE, "must look like type/subtype")


class S3Source(BaseModel):
    """An object in the S3 bucket the dispatcher reads attachments from."""

    model_config = ConfigDict(extra="ignore")
    bucket: StrictStr = Field(min_length=1)
    key: StrictStr = Field(min_length=1)


class Attachment(BaseModel):
    """One attachment: exactly one source, inline base64 content, a url or an s3 object."""

    model_config = ConfigDict(extra="ignore")
    filename: NonBlank
    content: Annotated[StrictStr, AfterValidator(_base64)] | None = Field(
        None,
        description="The file, base64-encoded.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    url: HttpUrl | None = Field(None, description="Fetched by the dispatcher at send time.")
    s3: S3Source | None = None
    mime_type: MimeType | None = Field(
        None, description="Default: guessed from the filename.", examples=["text/csv"]
    )
    content_id: HeaderText | None = Field(None, description="Makes an inline part (cid:).")

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        sources = [s for s in (self.content, self.url, self.s3) if s is not None]
        if len(sources) != 1:
            raise ValueError("needs exactly one source: content (base64), url or s3")
        return self


class Message(BaseModel):
    """A message as a client submits it (SPEC §5 'Message fields').

    Unknown fields are ignored but stored and returned unchanged.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    id: StrictStr = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="Printable characters; a queued message with this id is replaced.",
    )
    account_id: StrictStr | None = Field(
        None, description="Absent or null: the [smtp] default account."
    )
    from_: SingleAddress = Field(
        alias="from",
        description="Exactly one address; 'Name <addr>' is allowed.",
        examples=["Shop <noreply@shop.example>"],
    )
    from_name: HeaderText | None = Field(None, description="Display name for 'from'.")
    to: RecipientList = Field(description=ADDRESSES_HELP)
    cc: AddressList | None = Field(None, description=ADDRESSES_HELP)
    bcc: AddressList | None = Field(None, description=ADDRESSES_HELP)
    reply_to: AddressList | None = Field(None, description=ADDRESSES_HELP)
    return_path: SingleAddress | None = Field(None, description="Envelope sender.")
    subject: NonBlank = Field(description="Not blank.")
    body: StrictStr = Field(description="Plain text, or HTML when content_type is html.")
    content_type: Literal["plain", "html"] | None = Field(None, description="Default: plain.")
    html: StrictBool | None = Field(None, description="true means content_type html.")
    headers: (
        Annotated[
            dict[StrictStr, HeaderText], _schema(propertyNames={"pattern": HEADER_NAME.pattern})
        ]
        | None
    ) = Field(None, description="Extra header fields, name to value.")
    message_id: HeaderText | None = Field(
        None, description="Kept as given. Default: <random@the sender's domain>."
    )
    priority: PriorityValue = omittable(PRIORITY_HELP + " Default: the batch's default_priority.")
    deferred_ts: EpochSeconds = omittable("Do not send before this epoch second.")
    attachments: list[Attachment] | None = None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not value.isprintable() or not value.strip():
            raise ValueError("must be printable characters only")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict | None) -> dict | None:
        for name in value or {}:
            if not HEADER_NAME.fullmatch(name):  # match() would let a final newline through
                raise ValueError(f"header name {name!r} is not a valid header field name")
        return value

    @property
    def is_html(self) -> bool:
        return self.content_type == "html" or (self.content_type is None and bool(self.html))

    def resolved_priority(self, default: int) -> int:
        return default if self.priority is None else int(Priority.parse(self.priority))

    def recipients(self) -> list[str]:
        """Every envelope recipient: to, cc and bcc addresses."""
        found = []
        for value in (self.to, self.cc, self.bcc):
            if value:
                found.extend(addr for _, addr in parse_address_list(value))
        return found


def explain(error: ValidationError) -> str:
    """One sentence from the first pydantic error, naming the field."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "message"
    if first["type"] == "missing":
        return f"missing required field '{loc}'"
    if first["type"] in {"string_type", "int_type", "bool_type", "dict_type", "list_type"}:
        return f"field '{loc}' has the wrong type ({first['msg'].lower()})"
    if first["type"] == "string_too_short":
        return f"field '{loc}' must not be empty"
    message = first["msg"].removeprefix("Value error, ")
    separator = " " if message[:1].islower() else ": "
    return f"field '{loc}'{separator}{message}"


def _depth_over(item: Any, limit: int) -> bool:
    """True when objects and lists nest deeper than ``limit`` (walked without recursion)."""
    stack = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def validate_message(item: Any) -> tuple[Message | None, dict | None, str | None]:
    """(model, stored payload, None) for a good item, (None, None, reason) for a bad one."""
    if not isinstance(item, dict):
        return None, None, "each message must be a JSON object"
    if _depth_over(item, MAX_DEPTH):
        return None, None, f"the message nests objects or lists more than {MAX_DEPTH} levels deep"
    try:
        model = Message.model_validate(item)
    except ValidationError as exc:
        return None, None, explain(exc)
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, None, "the message contains text that is not valid Unicode (lone surrogate)"
    return model, item, None


class Account(BaseModel):
    """An SMTP account as POST /account takes it; the reference's fields plus ours."""

    model_config = ConfigDict(extra="ignore")
    id: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ACCOUNT_ID)
    host: StrictStr = Field(min_length=1, max_length=MAX_HOST_LENGTH, pattern=HOST)
    port: StrictInt = Field(ge=1, le=65535)
    user: StrictStr | None = Field(None, description="Login; none: no AUTH.")
    password: StrictStr | None = Field(
        None, description="Never returned.", json_schema_extra={"writeOnly": True}
    )
    use_tls: StrictBool | None = Field(None, description="Implicit TLS; default: port is 465.")
    starttls: StrictBool = Field(False, description="Upgrade with STARTTLS (not with use_tls).")
    ttl: StrictInt = Field(300, ge=1, le=MAX_TTL, description="Seconds a connection is reused.")
    timeout: float = Field(30.0, gt=0, le=MAX_TIMEOUT, description="Seconds per SMTP command.")
    limit_per_second: Limit | None = Field(None, description="Most sends per second.")
    limit_per_minute: Limit | None = Field(None, description="Most sends per minute.")
    limit_per_hour: Limit | None = Field(None, description="Most sends per hour.")
    limit_per_day: Limit | None = Field(None, description="Most sends per day.")
    limit_behavior: Literal["defer", "reject"] = Field(
        "defer", description="Over a limit: defer waits for a free slot, reject fails."
    )
    batch_size: Limit | None = Field(None, description="Messages sent per connection.")
    max_recipients_per_transaction: StrictInt = Field(
        100,
        ge=1,
        le=MAX_LIMIT,
        description="RCPTs per SMTP transaction; more recipients take several transactions.",
    )

    @field_validator("id", "host", "user", "password")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not valid Unicode (lone surrogate)") from None
        return value

    @model_validator(mode="after")
    def _tls_modes(self) -> Account:
        if self.use_tls and self.starttls:
            raise ValueError("use_tls (implicit TLS) and starttls cannot both be true")
        return self

    @property
    def implicit_tls(self) -> bool:
        return self.port == 465 if self.use_tls is None else self.use_tls
