"""A tenant as the API and the CLI take it, and its API token (docs/tenants.md).

A tenant token is ``amt_`` and 256 random bits (``common.crypto.new_token``), shown once,
at creation and at each rotation; the store keeps its SHA-256 only.  A fast hash is right
here: the token is random and long, so its hash cannot be searched for, and a request is
authenticated with one hash and one indexed lookup.  The prefix lets a request that was
meant for a tenant be told from one carrying the admin token, and lets secret scanners
recognise a leaked token.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from common import crypto
from common.enums import DEFAULT_TENANT
from common.models import Limit, omittable

TOKEN_PREFIX = "amt_"
SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"  # no dot: ledger file names rely on it (common.ratelimit)
MAX_NAME = 200
MAX_SECRET = 1000
URL = r"^https?://\S+$"


def new_token() -> str:
    """A new tenant token (shown once, never stored as such)."""
    return TOKEN_PREFIX + crypto.new_token()


def token_hash(token: str) -> str:
    """What the store keeps of a token, and looks a presented one up by."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def is_tenant_token(token: str) -> bool:
    """True for a token shaped like a tenant's (the admin token is never one)."""
    return token.startswith(TOKEN_PREFIX)


def hashes_match(presented: str, stored: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(presented.encode("ascii"), stored.encode("ascii"))


class TenantSettings(BaseModel):
    """What a tenant is made of besides its id and token; PATCH takes any of these."""

    model_config = ConfigDict(extra="forbid")  # a mistyped limit must not pass unnoticed
    name: StrictStr = omittable("A name people know it by.", min_length=1, max_length=MAX_NAME)
    client_sync_url: StrictStr | None = Field(
        None, pattern=URL, max_length=2000, description="Where its delivery reports go."
    )
    client_sync_user: StrictStr | None = Field(
        None, max_length=MAX_SECRET, description="Basic auth user for it."
    )
    client_sync_password: StrictStr | None = Field(
        None,
        max_length=MAX_SECRET,
        description="Basic auth password; encrypted at rest, never returned.",
        json_schema_extra={"writeOnly": True},
    )
    client_sync_token: StrictStr | None = Field(
        None,
        max_length=MAX_SECRET,
        description="Bearer token (wins over basic auth); encrypted at rest, never returned.",
        json_schema_extra={"writeOnly": True},
    )
    client_sync_signing_key: StrictStr | None = Field(
        None,
        max_length=MAX_SECRET,
        description="HMAC key signing each report; encrypted at rest, never returned.",
        json_schema_extra={"writeOnly": True},
    )
    report_format: Literal["delivery_report", "reports"] = omittable(
        "The key report items travel under (default delivery_report)."
    )
    limit_per_minute: Limit | None = Field(None, description="Most sends per minute, all accounts.")
    limit_per_hour: Limit | None = Field(None, description="Most sends per hour, all accounts.")
    limit_per_day: Limit | None = Field(None, description="Most sends per day, all accounts.")
    limit_behavior: Literal["defer", "reject"] = omittable(
        "Over a tenant-wide limit: defer (default) waits, reject fails."
    )

    @field_validator("*")
    @classmethod
    def _encodable(cls, value):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not valid Unicode (lone surrogate)") from None
        return value


class NewTenant(TenantSettings):
    """A tenant to create: an id, a name, and optionally its report upstream and limits."""

    id: StrictStr = Field(
        pattern=SLUG, description="A slug: lower-case letters, digits and '-', at most 63."
    )
    name: StrictStr = Field(
        min_length=1, max_length=MAX_NAME, description="A name people know it by."
    )

    @field_validator("id")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == DEFAULT_TENANT:
            raise ValueError(f"'{DEFAULT_TENANT}' is the tenant that always exists")
        return value
