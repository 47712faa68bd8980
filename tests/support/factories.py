"""The one set of test data: message payloads, account bodies, a clock tests move by hand."""

from __future__ import annotations

T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15 08:00 UTC) for code that takes a clock


def message(message_id: str = "m1", account_id: str | None = None, **fields) -> dict:
    """A valid add-messages item whose Subject is its id, so a sink tells messages apart.

    Without ``account_id`` the item names no account: it goes to the default [smtp] account.
    """
    item = {
        "id": message_id,
        "from": "sender@example.com",
        "to": "rcpt@example.com",
        "subject": message_id,
        "body": f"body of {message_id}",
    }
    if account_id is not None:
        item["account_id"] = account_id
    return {**item, **fields}


def account(account_id: str = "acme", **fields) -> dict:
    """A valid POST /account body for a server nobody runs (``Peer.account()``: a live one)."""
    return {
        "id": account_id,
        "host": "smtp.acme.test",
        "port": 587,
        "user": "u",
        "password": "pw",
        "starttls": True,
        **fields,
    }


class Clock:
    """A clock tests move by hand: pass it where code takes ``clock``, then set ``t``."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t
