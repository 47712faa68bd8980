"""Payload models: what a message and an account may look like, with reasons for rejection.

The API and the CLI validate with the same code.  A message is validated on its own; the
result is either a ``Message`` or a one-sentence reason a person can act on.  The stored
payload is the item exactly as the client sent it, so a message reads back identical; unknown
fields are ignored (never validated or acted on) but kept, as the reference service kept them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from common.addresses import no_line_breaks, parse_address_list
from common.enums import Priority

MAX_ID_LENGTH = 255
MAX_BATCH = 1000  # most messages one add-messages request may carry
MAX_TTL = 86400  # seconds an SMTP connection may be kept: a day is already generous
MAX_LIMIT = 10**9  # beyond any real rate or batch; keeps values inside SQLite integers
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: later values cannot be a real send time
HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 field name: printable ASCII except ':'


def _parsed(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        return parse_address_list(value)
    raise ValueError("must be an address string or a list of address strings")


def _address_list(value: Any) -> Any:
    _parsed(value)
    return value


def _recipient_list(value: Any) -> Any:
    if not _parsed(value):
        raise ValueError("must name at least one recipient")
    return value


def _single_address(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    pairs = parse_address_list(value)
    if len(pairs) != 1:
        raise ValueError("must be exactly one email address")
    return value


def _header_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return no_line_breaks(value)


def _priority(value: Any) -> Any:
    Priority.parse(value)
    return value


def _epoch(value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_EPOCH
    ):
        raise ValueError("must be epoch seconds (a number between 0 and year 9999)")
    return value


AddressList = Annotated[Any, BeforeValidator(_address_list)]
RecipientList = Annotated[Any, BeforeValidator(_recipient_list)]
SingleAddress = Annotated[Any, BeforeValidator(_single_address)]
HeaderText = Annotated[Any, BeforeValidator(_header_text)]


class S3Source(BaseModel):
    model_config = ConfigDict(extra="ignore")
    bucket: StrictStr = Field(min_length=1)
    key: StrictStr = Field(min_length=1)


class Attachment(BaseModel):
    """One attachment: exactly one of inline base64 ``content``, an ``url`` or an ``s3`` object."""

    model_config = ConfigDict(extra="ignore")
    filename: HeaderText
    content: StrictStr | None = None
    url: StrictStr | None = None
    s3: S3Source | None = None
    mime_type: HeaderText | None = None
    content_id: HeaderText | None = None

    @field_validator("filename")
    @classmethod
    def _filename_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("content")
    @classmethod
    def _valid_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("is not valid base64") from None
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value, re.I):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("mime_type")
    @classmethod
    def _mime_type(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.+-]+/[\w.+-]+$", value):
            raise ValueError("must look like type/subtype")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        sources = [s for s in (self.content, self.url, self.s3) if s is not None]
        if len(sources) != 1:
            raise ValueError("needs exactly one source: content (base64), url or s3")
        return self


class Message(BaseModel):
    """A message as a client submits it (SPEC §5 'Message fields')."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    id: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH)
    account_id: StrictStr | None = None
    from_: SingleAddress = Field(alias="from")
    from_name: HeaderText | None = None
    to: RecipientList
    cc: AddressList | None = None
    bcc: AddressList | None = None
    reply_to: AddressList | None = None
    return_path: SingleAddress | None = None
    subject: HeaderText
    body: StrictStr
    content_type: Literal["plain", "html"] | None = None
    html: StrictBool | None = None
    headers: dict[StrictStr, HeaderText] | None = None
    message_id: HeaderText | None = None
    priority: Annotated[Any, BeforeValidator(_priority)] = None
    deferred_ts: Annotated[Any, BeforeValidator(_epoch)] = None
    attachments: list[Attachment] | None = None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if not value.isprintable() or not value.strip():
            raise ValueError("must be printable characters only")
        return value

    @field_validator("subject")
    @classmethod
    def _subject_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict | None) -> dict | None:
        for name in value or {}:
            if not HEADER_NAME.match(name):
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


def validate_message(item: Any) -> tuple[Message | None, dict | None, str | None]:
    """(model, stored payload, None) for a good item, (None, None, reason) for a bad one."""
    if not isinstance(item, dict):
        return None, None, "each message must be a JSON object"
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
    id: StrictStr = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[\w.@+-]+$")
    host: StrictStr = Field(min_length=1, max_length=255, pattern=r"^[^\s/]+$")
    port: StrictInt = Field(ge=1, le=65535)
    user: StrictStr | None = None
    password: StrictStr | None = None
    use_tls: StrictBool | None = None
    starttls: StrictBool = False
    ttl: StrictInt = Field(default=300, ge=1, le=MAX_TTL)
    timeout: float = Field(default=30.0, gt=0, le=600)
    limit_per_second: StrictInt | None = Field(default=None, ge=1, le=MAX_LIMIT)
    limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=MAX_LIMIT)
    limit_per_hour: StrictInt | None = Field(default=None, ge=1, le=MAX_LIMIT)
    limit_per_day: StrictInt | None = Field(default=None, ge=1, le=MAX_LIMIT)
    limit_behavior: Literal["defer", "reject"] = "defer"
    batch_size: StrictInt | None = Field(default=None, ge=1, le=MAX_LIMIT)

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
